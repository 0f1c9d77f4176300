"""MAE's objective: reconstruct the pixels of the masked patches (:mod:`coembed.models.mae`).

The batch's captions are not used. The mask is drawn from the step's ``generator``, so a resumed run
masks exactly the patches an uninterrupted one would. :func:`validation_loss` scores held-out images
under one fixed mask.
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


VALIDATION_SEED = 0  # one fixed mask per validation batch, so val losses of different steps compare


@torch.no_grad()
def validation_loss(model, images: torch.Tensor, *, seed: int = VALIDATION_SEED) -> float:
    """The masked-patch MSE of ``images`` (B, 3, H, W) in eval mode, masks drawn from ``seed``."""
    model.eval()
    out = model.forward_features(images, torch.Generator().manual_seed(seed))
    return masked_patch_mse(out.pred, out.target, out.mask, norm_pix=model.cfg.norm_pix_loss).item()
