"""The VQA classifier's objective: soft-score BCE of the answer logits against each answer's VQA
accuracy (``batch.answer_scores``, which the trainer fills with ``task: vqa``)."""

from __future__ import annotations

import torch

from coembed.errors import ConfigError
from coembed.losses.vqa import soft_score_bce
from coembed.objectives import FusionBatch


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"vqa": ...}``; ``progress``, ``weights`` and ``generator`` are unused.

    Raises:
        ConfigError: the batch carries no answer scores (the run is not ``task: vqa``).
    """
    if batch.answer_scores is None:
        raise ConfigError("a vqa_classifier trains on question-answer pairs: set task: vqa")
    return {"vqa": soft_score_bce(model.answer_logits(batch.images, batch.tokens), batch.answer_scores)}
