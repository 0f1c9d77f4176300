"""The BLIP captioner's objective: language modelling of the caption given the image, with BLIP's label
smoothing (``cfg.label_smoothing``, 0.1), padding ignored (:func:`coembed.losses.captioning.caption_loss`)."""

from __future__ import annotations

import torch

from coembed.losses.captioning import caption_loss
from coembed.objectives import FusionBatch
from coembed.towers.text_transformer import trim_padding


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"caption": ...}``; ``progress``, ``weights`` and ``generator`` are unused."""
    tokens = trim_padding(batch.tokens, model.cfg.text.pad_id)
    logits = model(batch.images, tokens)  # (B, T, vocab)
    return {"caption": caption_loss(logits, tokens, model.cfg.text.pad_id, label_smoothing=model.cfg.label_smoothing)}
