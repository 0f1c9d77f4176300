"""MAE's objective: reconstruct the pixels of the masked patches (:mod:`coembed.models.mae`).

The batch's captions are not used. The mask is drawn from the step's ``generator``, so a resumed run
masks exactly the patches an uninterrupted one would.
"""

from __future__ import annotations

import torch

from coembed.losses.reconstruction import masked_patch_mse
from coembed.objectives import FusionBatch


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"mae": ...}``: the masked-patch MSE; ``progress`` and ``weights`` are unused."""
    out = model.forward_features(batch.images, generator)
    return {"mae": masked_patch_mse(out.pred, out.target, out.mask, norm_pix=model.cfg.norm_pix_loss)}
