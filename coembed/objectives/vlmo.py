"""VLMo's objective: ITC on the dual-encoder passes, ITM with hard negatives mined from the ITC
similarities (VLMo's "global hard negatives", in-batch here), and MLM in fusion mode.

The ITM batch also pairs every image with the manifest's false caption (``batch.negatives``) when the
batch has them, as the ViLT objective does, so the two families see the same negatives.
"""

from __future__ import annotations

import torch

from coembed.losses.contrastive import clip_loss
from coembed.losses.matching import sample_itm_negatives
from coembed.objectives import FusionBatch
from coembed.objectives.common import itm_term, mlm_term


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"itc": ..., "itm": ..., "mlm": ...}``; ``weights`` and ``progress`` are unused (the trainer weights)."""
    image_emb = model.encode_image(batch.images, normalize=True)
    text_emb = model.encode_text(batch.tokens, normalize=True)
    scale = model.temperature()
    sim = (scale * image_emb.float() @ text_emb.float().T).detach()  # (B, B) image-to-text
    neg_image, neg_text = sample_itm_negatives(sim, sim.T, batch.image_ids, generator=generator)
    return {"itc": clip_loss(image_emb.float(), text_emb.float(), scale.float()), "itm": itm_term(model, batch, neg_image, neg_text),
            "mlm": mlm_term(model, batch, generator)}
