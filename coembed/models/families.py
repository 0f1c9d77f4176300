"""The model families a checkpoint's ``config.json`` can name (``model.family``), and their classes.

Each entry is ``"module:Class"``, imported on first use; the class carries its typed config class as
``config_class`` and is built as ``Class(config_class(**fields))``. A family with a training
objective other than the dual encoder's contrastive step names it in :data:`OBJECTIVES`
(``"module"`` exposing ``compute_losses``, see :mod:`coembed.objectives`).
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

FAMILIES: dict[str, str] = {
    "dual_encoder": "coembed.models.dual_encoder:DualEncoder",
    "albef": "coembed.models.fusion:FusionModel",
    "vilt": "coembed.models.single_stream:Vilt",
    "vlmo": "coembed.models.mome:Vlmo",
    "mae": "coembed.models.mae:MAE",
    "causal_lm": "coembed.models.causal_lm:CausalLM",
    "qformer": "coembed.models.qformer:QFormer",
    "flamingo": "coembed.models.flamingo:Flamingo",
    "llava": "coembed.models.llava:Llava",
    "coca": "coembed.models.coca:Coca",
    "blip": "coembed.models.blip_captioner:BlipCaptioner",
    "vqa_classifier": "coembed.models.vqa_classifier:VQAClassifier",
    "blip_vqa": "coembed.models.blip_vqa:BlipVQA",
    "diffusion": "coembed.models.diffusion:Diffusion",
}
OBJECTIVES: dict[str, str] = {
    "albef": "coembed.objectives.albef",
    "vilt": "coembed.objectives.vilt",
    "vlmo": "coembed.objectives.vlmo",
    "mae": "coembed.objectives.mae",
    "causal_lm": "coembed.objectives.causal_lm",
    "qformer": "coembed.objectives.qformer",
    "flamingo": "coembed.objectives.bridge",
    "llava": "coembed.objectives.bridge",
    "coca": "coembed.objectives.coca",
    "blip": "coembed.objectives.blip",
    "vqa_classifier": "coembed.objectives.vqa_classifier",
    "blip_vqa": "coembed.objectives.blip_vqa",
    "diffusion": "coembed.objectives.diffusion",
}
# Image-only families: the trainer still tokenizes each batch's captions, and their objective ignores them.
IMAGE_ONLY: frozenset[str] = frozenset({"mae"})
# Text-only families, the mirror case: the trainer still loads each batch's images (at the config's small
# ``image_size``), and their objective ignores them.
TEXT_ONLY: frozenset[str] = frozenset({"causal_lm"})
# The shortest context a tokenizer accepts (<sot>, <eot>): what an image-only family's captions are cut to.
IMAGE_ONLY_CONTEXT = 2


def model_class(family: str) -> type[nn.Module]:
    """The class of ``family``; ValueError naming the known families otherwise."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    module, _, name = FAMILIES[family].partition(":")
    return getattr(importlib.import_module(module), name)


def build_model(family: str, fields: dict[str, Any]) -> nn.Module:
    """An untrained model of ``family`` from its config fields (as ``cfg.to_dict()`` wrote them, minus ``family``)."""
    cls = model_class(family)
    return cls(cls.config_class(**fields))


def context_length(model: nn.Module) -> int:
    """The text context length of a model of any family (``text_cfg``, ``cfg.text`` or ``cfg.context_length``);
    :data:`IMAGE_ONLY_CONTEXT` for an image-only family, which reads no text."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "to_dict") and cfg.to_dict().get("family") in IMAGE_ONLY:
        return IMAGE_ONLY_CONTEXT
    for holder in (getattr(model, "text_cfg", None), getattr(cfg, "text", None), cfg):
        if getattr(holder, "context_length", None):
            return int(holder.context_length)
    raise ValueError(f"{type(model).__name__}'s config has no context_length")
