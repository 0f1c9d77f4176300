"""Start a new run from another checkpoint's weights (``init_from``): every tensor of the checkpoint
whose name (under the chosen prefixes) and shape match the new model's is copied; the rest keeps its
fresh initialisation.

This is how ALBEF starts from a pretrained ViT (DeiT) and BERT: here, e.g., a fusion model's image
tower from a dual encoder trained on the same data (``init_prefixes: ["visual."]``; the towers share
parameter names). Weights are read from ``model.safetensors`` only, never unpickled. Models with
momentum copies re-synchronise them after the copy (``sync_momentum``), so the EMA starts from the
loaded weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from coembed.checkpoint import MODEL_FILE, read_tensors, resolve
from coembed.errors import ConfigError


@dataclass
class WarmStart:
    """What :func:`warm_start` copied: tensor names, their element count, and what it left alone."""

    source: Path
    copied: list[str] = field(default_factory=list)
    elements: int = 0
    not_in_model: list[str] = field(default_factory=list)  # checkpoint tensors under the prefixes the model lacks

    def summary(self) -> str:
        extra = f"; {len(self.not_in_model)} checkpoint tensors have no counterpart" if self.not_in_model else ""
        return f"initialised {len(self.copied)} tensors ({self.elements:,} values) from {self.source}{extra}"


def warm_start(model: nn.Module, path: str | os.PathLike, prefixes: list[str] | None = None) -> WarmStart:
    """Copy the matching tensors of the checkpoint at ``path`` (a checkpoint or run folder) into ``model``.

    Raises ConfigError when a tensor under ``prefixes`` has another shape in the model, or when nothing
    matches (a wrong prefix or an unrelated checkpoint), naming the prefix and the checkpoint.
    """
    folder = resolve(path)
    source = read_tensors(folder / MODEL_FILE)
    own = model.state_dict()
    chosen = {k: v for k, v in source.items() if not prefixes or k.startswith(tuple(prefixes))}
    report = WarmStart(folder)
    mismatched = [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
                  for k, v in chosen.items() if k in own and own[k].shape != v.shape]
    if mismatched and prefixes:
        raise ConfigError(f"init_from {folder}: tensors under init_prefixes {prefixes} differ in shape: " + "; ".join(mismatched[:5]))
    with torch.no_grad():
        for key, value in chosen.items():
            if key in own and own[key].shape == value.shape:
                own[key].copy_(value)
                report.copied.append(key)
                report.elements += value.numel()
            elif key not in own:
                report.not_in_model.append(key)
    if not report.copied:
        where = f"under init_prefixes {prefixes}" if prefixes else "at all"
        raise ConfigError(f"init_from {folder}: no tensor of the checkpoint matches the model {where} (same name and shape)")
    if hasattr(model, "sync_momentum"):
        model.sync_momentum()
    return report
