"""The generative answerer's objective: the decoder reads ``<sot> question answer <eot>`` and only the
answer tokens and their ``<eot>`` are scored (:func:`coembed.losses.vqa.answer_loss`), with BLIP's
label smoothing (``cfg.label_smoothing``)."""

from __future__ import annotations

import torch

from coembed.errors import ConfigError
from coembed.losses.vqa import answer_loss
from coembed.objectives import FusionBatch


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"answer": ...}``; ``progress``, ``weights`` and ``generator`` are unused.

    Raises:
        ConfigError: the batch carries no question-answer rows (the run is not ``task: vqa``).
    """
    if batch.qa_tokens is None or batch.answer_mask is None:
        raise ConfigError("a blip_vqa model trains on question-answer pairs: set task: vqa")
    logits = model(batch.images, batch.qa_tokens)  # (B, T, vocab)
    return {"answer": answer_loss(logits, batch.qa_tokens, batch.answer_mask, label_smoothing=model.cfg.label_smoothing)}
