"""ViLT's objective: image-text matching with negatives, masked language modelling and, opt-in,
word-patch alignment.

ViLT has no unimodal embeddings to mine hard negatives from, so the in-batch negatives (a random
other image for every text, a random other text for every image, never one of the same image) are
drawn uniformly; the hard negatives are the manifest's false captions (``batch.negatives``, one per
image, e.g. an object's shape or colour changed), each paired with its image as a non-match.

Word-patch alignment (:mod:`coembed.losses.alignment`) runs on the states of the ITM pass when
``weights`` names ``"wpa"`` (ViLT weighted it 0.1); the words exclude ``<sot>``,
``<eot>`` and padding, the patches the image CLS, as ViLT.
"""

from __future__ import annotations

import torch

from coembed.losses.alignment import wpa_distance, wpa_loss
from coembed.losses.matching import itm_loss, sample_itm_negatives
from coembed.objectives import FusionBatch
from coembed.objectives.common import itm_pairs, mlm_term
from coembed.tokenizer import SPECIAL_TOKENS


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"itm": ..., "mlm": ...}``, plus ``"wpa"`` when ``weights`` names it; ``progress`` is unused."""
    b = batch.images.shape[0]
    uniform = torch.zeros(b, b, device=batch.images.device)  # equal similarities: uniform draws
    neg_image, neg_text = sample_itm_negatives(uniform, uniform, batch.image_ids, generator=generator)
    losses = matching_terms(model, batch, neg_image, neg_text, with_wpa="wpa" in weights)
    losses["mlm"] = mlm_term(model, batch, generator)
    return losses


def matching_terms(model, batch: FusionBatch, neg_image: torch.Tensor, neg_text: torch.Tensor, *,
                   with_wpa: bool) -> dict[str, torch.Tensor]:
    """ITM (and WPA) over one pass of the matching pairs."""
    images, tokens, labels = itm_pairs(batch, neg_image, neg_text, model.cfg.pad_id)
    states = model.forward_features(images, tokens)  # (N, T + 1 + P, width)
    out = {"itm": itm_loss(model.itm_head(states), labels)}
    if with_wpa:
        t = tokens.shape[1]
        words = ~torch.isin(tokens, torch.arange(len(SPECIAL_TOKENS), device=tokens.device))  # (N, T)
        patches = states.new_ones(states.shape[0], states.shape[1] - t - 1, dtype=torch.bool)
        out["wpa"] = wpa_loss(wpa_distance(states[:, :t], states[:, t + 1 :], words, patches), labels)
    return out
