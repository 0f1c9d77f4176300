"""The frozen image encoder of the bridges: the ``visual`` ViT tower of a coembed checkpoint.

The tower is built without its projection (a bridge reads all output tokens, not the pooled embedding)
and without patch dropout, and its tensors keep the names a dual encoder gives them (``visual.*``), so
the bridge's ``visual`` takes exactly the ``visual.*`` tensors of a `tiny` run (``visual.proj`` aside).
A bridge config names the checkpoint in ``vision_path``; its vision section is read from there.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from coembed.errors import CheckpointError, ConfigError
from coembed.towers.vit import VisionConfig, VisionTransformer


def read_vision_config(path: str) -> VisionConfig:
    """The ``model.vision`` section of the coembed checkpoint (or run folder) ``path``."""
    from coembed.checkpoint import read_json, resolve

    try:
        model = read_json(resolve(Path(path)) / "config.json").get("model")
    except CheckpointError as e:
        raise ConfigError(f"vision_path: {e}") from None
    vision = model.get("vision") if isinstance(model, dict) else None
    if not isinstance(vision, dict) or vision.get("tower", "vit") != "vit":
        raise ConfigError(f"vision_path {path}: the checkpoint has no ViT image tower (model.vision)")
    try:
        return VisionConfig(**vision)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"vision_path {path}: invalid vision section: {e}") from None


def frozen_visual(cfg: VisionConfig) -> VisionTransformer:
    """A ViT without projection or patch dropout whose parameters take no gradient."""
    visual = VisionTransformer(replace(cfg, proj=False, patch_dropout=0.0), cfg.width)
    visual.requires_grad_(False)
    return visual


def load_visual(visual: VisionTransformer, path: str) -> None:
    """Copy the ``visual.*`` tensors (but ``visual.proj``) of the checkpoint ``path`` into ``visual``;
    missing, unexpected or mis-shaped tensors are an error listing them."""
    from coembed.checkpoint import check_keys, read_model_files

    files = read_model_files(path)
    state = {k.removeprefix("visual."): v for k, v in files.state_dict.items() if k.startswith("visual.") and k != "visual.proj"}
    check_keys(visual, state, files.path)
    visual.load_state_dict(state)


def image_tokens(visual: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """All output tokens of the frozen tower, without autograd: (B, 3, H, W) -> (B, [1 +] N, width)."""
    with torch.no_grad():
        return visual.forward_features(images)


def resolve_vision(vision: VisionConfig | dict | None, path: str, default: VisionConfig) -> VisionConfig:
    """A bridge's vision section: as stored (dict or config), else read from ``path``, else ``default``."""
    if isinstance(vision, dict):
        return VisionConfig(**vision)
    if isinstance(vision, VisionConfig):
        return vision
    if path:
        return read_vision_config(path)
    return default

