"""``coembed.load``: a checkpoint -> (model, image preprocess, tokenizer).

A checkpoint is a coembed folder, an OpenCLIP / OpenAI state dict (file, or folder with
``open_clip_config.json``) or a Hugging Face ``CLIPModel`` / ``SiglipModel`` folder; the format is
told from the folder's contents and the file's type (:func:`detect_format`).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Union

import torch

from coembed.checkpoint import CHECKPOINT_DIR, CONFIG_FILE, TOKENIZER_FILE, check_keys, read_model_files, save_model_files
from coembed.errors import CheckpointError
from coembed.interop.hf_tokenizer import HFTokenizer
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.models.families import FAMILIES
from coembed.models.families import build_model as build_family_model
from coembed.models.families import model_class
from coembed.tokenizer import Tokenizer
from coembed.tokenizer_clip import ClipTokenizer
from coembed.transforms import ImageTransform

AnyTokenizer = Union[Tokenizer, ClipTokenizer, HFTokenizer]
FORMATS = ("coembed", "openclip", "hf")


class Loaded(NamedTuple):
    """What :func:`load` returns; unpack as ``model, preprocess, tokenizer = coembed.load(path)``.

    ``tokenizer`` is None only for a Hugging Face SigLIP folder without ``tokenizer.json``.
    """

    model: DualEncoder
    preprocess: ImageTransform
    tokenizer: AnyTokenizer | None


def detect_format(path: str | os.PathLike) -> str:
    """``"coembed"``, ``"openclip"`` or ``"hf"`` for a checkpoint path (coembed when unsure: its errors explain)."""
    path = Path(path)
    if path.is_file():
        return "openclip"
    if not path.is_dir():
        return "coembed"
    config = path / CONFIG_FILE
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return "coembed"
        return "hf" if isinstance(data, dict) and "model_type" in data and "format_version" not in data else "coembed"
    if (path / CHECKPOINT_DIR).is_dir():
        return "coembed"
    from coembed.interop.openclip import CONFIG_FILE as OPENCLIP_CONFIG, WEIGHT_FILES

    if any((path / name).is_file() for name in (OPENCLIP_CONFIG, *WEIGHT_FILES)):
        return "openclip"
    return "coembed"


def model_from_config(model_cfg: dict[str, Any]) -> DualEncoder:
    """Build an (untrained) model from the ``model`` section of a checkpoint config."""
    if not isinstance(model_cfg, dict):
        raise CheckpointError(f"model config must be a JSON object, got {type(model_cfg).__name__}")
    data = dict(model_cfg)
    family = data.pop("family", "dual_encoder")
    if family not in FAMILIES:
        raise CheckpointError(f"unsupported model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    try:
        return build_family_model(family, data)
    except (TypeError, ValueError) as e:
        wrong = _wrong_types(data, _default_fields(family))
        raise CheckpointError(f"invalid model config: {'; '.join(wrong) if wrong else e}") from None


def _default_fields(family: str) -> dict[str, Any]:
    try:
        return model_class(family).config_class().to_dict()
    except (TypeError, ValueError):  # a family whose config has required fields: no defaults to compare with
        return {}


def _wrong_types(data: dict[str, Any], defaults: dict[str, Any], prefix: str = "model.") -> list[str]:
    """Fields whose value is not a number (or a bool) where the family's default is one: the likely
    cause of a TypeError deep inside a config's validation, named so the user can find it."""
    wrong = []
    for key, value in data.items():
        default = defaults.get(key)
        if isinstance(default, dict) and isinstance(value, dict):
            wrong += _wrong_types(value, default, f"{prefix}{key}.")
        elif isinstance(default, bool) and not isinstance(value, bool):
            wrong.append(f"{prefix}{key} must be true or false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None \
                and (isinstance(value, bool) or not isinstance(value, (int, float))):
            wrong.append(f"{prefix}{key} must be a number, got {value!r}")
    return wrong


def checkpoint_config(model: DualEncoder, preprocess: ImageTransform, **extra: Any) -> dict[str, Any]:
    """The ``config.json`` content for a model and its preprocessing."""
    pre = {"image_size": preprocess.image_size, "mean": list(preprocess.mean), "std": list(preprocess.std), "resize_mode": preprocess.resize_mode}
    return {"model": model.cfg.to_dict(), "preprocess": pre, **extra}


def default_preprocess(model: torch.nn.Module) -> ImageTransform:
    """The model's input transform: its image size (``cfg.image_size`` when set, else ``cfg.vision.image_size``;
    a tiling bridge reads images larger than its encoder's) and CLIP's mean/std."""
    size = getattr(model.cfg, "image_size", 0) or model.cfg.vision.image_size
    return ImageTransform(image_size=size)


def load(path: str | os.PathLike, device: str | torch.device = "cpu", *, quick_gelu: bool | None = None) -> Loaded:
    """Load a checkpoint for inference: a coembed folder (or a run folder holding ``checkpoint/``), an
    OpenCLIP/OpenAI state dict or a Hugging Face CLIP/SigLIP folder.

    Args:
        path: file or folder.
        device: where the model goes.
        quick_gelu: whether the model uses QuickGELU, when the checkpoint does not say (OpenAI-layout
            state dicts without a config); a value contradicting the checkpoint's config is warned about.

    Unknown, missing or mis-shaped tensors are an error listing them; nothing is silently dropped.
    """
    fmt = detect_format(path)
    if fmt != "coembed":
        return _load_foreign(path, fmt, device, quick_gelu)
    files = read_model_files(path)
    if "model" not in files.config:
        raise CheckpointError(f"{files.path / 'config.json'} has no 'model' section")
    model_cfg = dict(files.config["model"]) if isinstance(files.config["model"], dict) else files.config["model"]
    if quick_gelu is not None and isinstance(model_cfg, dict):
        model_cfg = _override_quick_gelu(model_cfg, quick_gelu, files.path / CONFIG_FILE)
    try:
        model = model_from_config(model_cfg)
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
    tokenizer = _read_tokenizer(files.path, files.config.get("tokenizer") or {})
    return Loaded(model, preprocess, tokenizer)


def _override_quick_gelu(model_cfg: dict[str, Any], quick_gelu: bool, source: Path) -> dict[str, Any]:
    stored = model_cfg.get("act", "quick_gelu" if model_cfg.get("quick_gelu") else "gelu") == "quick_gelu"
    if stored != quick_gelu:
        warnings.warn(f"{source}: the model was saved with quick_gelu={stored}, but quick_gelu={quick_gelu} was given; "
                      f"using {quick_gelu}", stacklevel=3)
    act = model_cfg.get("act", "gelu")
    act = "quick_gelu" if quick_gelu else (act if act != "quick_gelu" else "gelu")  # False keeps e.g. gelu_tanh
    return {**{k: v for k, v in model_cfg.items() if k != "quick_gelu"}, "act": act}


def _read_tokenizer(folder: Path, spec: dict[str, Any]) -> AnyTokenizer | None:
    kind = spec.get("kind", "bpe")
    if kind == "none":
        return None
    if kind == "bpe":
        return Tokenizer.from_file(folder / TOKENIZER_FILE)
    path = folder / TOKENIZER_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read tokenizer file ({e})") from None
    if kind == "clip":
        return ClipTokenizer.from_str(text, source=str(path))
    if kind == "hf":
        return HFTokenizer.from_str(text, int(spec.get("pad_id", 0)), source=str(path))
    raise CheckpointError(f"{folder / CONFIG_FILE}: unknown tokenizer kind {kind!r}")


def tokenizer_spec(tokenizer: AnyTokenizer | None) -> dict[str, Any]:
    """The ``tokenizer`` section of ``config.json``: which class reads ``tokenizer.json``."""
    if tokenizer is None:
        return {"kind": "none"}
    kind = getattr(tokenizer, "kind", "bpe")
    return {"kind": kind, "pad_id": tokenizer.pad_id} if kind == "hf" else {"kind": kind}


def tokenizer_section(tokenizer: AnyTokenizer | None) -> dict[str, Any]:
    """``{"tokenizer": spec}`` for ``config.json``, or nothing for coembed's own BPE tokenizer (the default)."""
    if tokenizer is not None and getattr(tokenizer, "kind", "bpe") == "bpe":
        return {}
    return {"tokenizer": tokenizer_spec(tokenizer)}


def build_model(config: DualEncoderConfig, state_dict: dict[str, torch.Tensor], source: Path | str) -> DualEncoder:
    """A model with exactly these tensors (missing, unknown or mis-shaped ones are an error)."""
    model = DualEncoder(config)
    check_keys(model, state_dict, Path(source))
    model.load_state_dict(state_dict)
    return model.eval()


def read_foreign(path: str | os.PathLike, fmt: str, quick_gelu: bool | None = None):
    """Read an OpenCLIP or Hugging Face checkpoint into a :class:`coembed.interop.common.Foreign`."""
    if fmt == "openclip":
        from coembed.interop import openclip

        return openclip.read(path, quick_gelu=quick_gelu)
    from coembed.interop import hf

    return hf.read(path, quick_gelu=quick_gelu)


def _load_foreign(path: str | os.PathLike, fmt: str, device: str | torch.device, quick_gelu: bool | None) -> Loaded:
    foreign = read_foreign(path, fmt, quick_gelu)
    model = build_model(foreign.config, foreign.state_dict, path)
    return Loaded(model.to(device), foreign.preprocess, foreign.tokenizer)


def save(path: str | os.PathLike, model: DualEncoder, tokenizer: AnyTokenizer | None, preprocess: ImageTransform | None = None) -> None:
    """Write an inference checkpoint folder (weights, config, tokenizer)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = checkpoint_config(model, preprocess or default_preprocess(model), **tokenizer_section(tokenizer))
    save_model_files(folder, model, config, tokenizer.to_str() if tokenizer is not None else None)
