"""ViLT's objective: image-text matching with negatives and masked language modelling.

ViLT has no unimodal embeddings to mine hard negatives from, so the in-batch negatives (a random
other image for every text, a random other text for every image, never one of the same image) are
drawn uniformly; the hard negatives are the manifest's false captions (``batch.negatives``, one per
image, e.g. an object's shape or colour changed), each paired with its image as a non-match. ViLT's
word-patch alignment is not part of this objective.
"""

from __future__ import annotations

import torch

from coembed.losses.matching import sample_itm_negatives
from coembed.objectives import FusionBatch
from coembed.objectives.common import itm_term, mlm_term, wanted


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"itm": ..., "mlm": ...}`` (a term whose weight is 0 is left out); ``progress`` is unused."""
    losses: dict[str, torch.Tensor] = {}
    if wanted(weights, "itm"):
        b = batch.images.shape[0]
        uniform = torch.zeros(b, b, device=batch.images.device)  # equal similarities: uniform draws
        neg_image, neg_text = sample_itm_negatives(uniform, uniform, batch.image_ids, generator=generator)
        losses["itm"] = itm_term(model, batch, neg_image, neg_text)
    if wanted(weights, "mlm"):
        losses["mlm"] = mlm_term(model, batch, generator)
    return losses
