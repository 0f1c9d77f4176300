"""``coembed.load``: a checkpoint folder -> (model, image preprocess, tokenizer)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from coembed.checkpoint import TOKENIZER_FILE, check_keys, read_model_files, save_model_files
from coembed.errors import CheckpointError
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.tokenizer import Tokenizer
from coembed.transforms import ImageTransform


class Loaded(NamedTuple):
    """What :func:`load` returns; unpack as ``model, preprocess, tokenizer = coembed.load(path)``."""

    model: DualEncoder
    preprocess: ImageTransform
    tokenizer: Tokenizer


def model_from_config(model_cfg: dict[str, Any]) -> DualEncoder:
    """Build an (untrained) model from the ``model`` section of a checkpoint config."""
    if not isinstance(model_cfg, dict):
        raise CheckpointError(f"model config must be a JSON object, got {type(model_cfg).__name__}")
    data = dict(model_cfg)
    family = data.pop("family", "dual_encoder")
    if family != "dual_encoder":
        raise CheckpointError(f"unsupported model family {family!r}")
    try:
        return DualEncoder(DualEncoderConfig(**data))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"invalid model config: {e}") from None


def checkpoint_config(model: DualEncoder, preprocess: ImageTransform, **extra: Any) -> dict[str, Any]:
    """The ``config.json`` content for a model and its preprocessing."""
    pre = {"image_size": preprocess.image_size, "mean": list(preprocess.mean), "std": list(preprocess.std), "resize_mode": preprocess.resize_mode}
    return {"model": model.cfg.to_dict(), "preprocess": pre, **extra}


def default_preprocess(model: DualEncoder) -> ImageTransform:
    return ImageTransform(image_size=model.cfg.vision.image_size)


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Loaded:
    """Load a coembed checkpoint folder (or a run folder holding ``checkpoint/``) for inference.

    Unknown, missing or mis-shaped tensors are an error listing them; nothing is silently dropped.
    """
    files = read_model_files(path)
    if "model" not in files.config:
        raise CheckpointError(f"{files.path / 'config.json'} has no 'model' section")
    try:
        model = model_from_config(files.config["model"])
    except CheckpointError as e:
        raise CheckpointError(f"{files.path / 'config.json'}: {e}") from None
    check_keys(model, files.state_dict, files.path)
    model.load_state_dict(files.state_dict)
    model.to(device).eval()
    pre_cfg = files.config.get("preprocess") or {}
    try:
        preprocess = ImageTransform(**pre_cfg) if pre_cfg else default_preprocess(model)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{files.path / 'config.json'}: invalid preprocess section: {e}") from None
    tokenizer = Tokenizer.from_file(files.path / TOKENIZER_FILE)
    return Loaded(model, preprocess, tokenizer)


def save(path: str | os.PathLike, model: DualEncoder, tokenizer: Tokenizer, preprocess: ImageTransform | None = None) -> None:
    """Write an inference checkpoint folder (weights, config, tokenizer)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    save_model_files(folder, model, checkpoint_config(model, preprocess or default_preprocess(model)), tokenizer.to_str())
