"""Pieces the fusion objectives share: the ITM pair batch and the MLM term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coembed.losses.matching import itm_loss, mask_tokens, mlm_loss
from coembed.objectives import FusionBatch
from coembed.tokenizer import SPECIAL_TOKENS


def pad_columns(tokens: Tensor, length: int, pad_id: int) -> Tensor:
    """Right-pad (B, T) ids with ``pad_id`` to (B, length), length >= T."""
    return F.pad(tokens, (0, length - tokens.shape[1]), value=pad_id)


def itm_pairs(batch: FusionBatch, neg_image: Tensor, neg_text: Tensor, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """The image-text matching batch: B positives, then for each text a negative image, for each image
    a negative text from the batch and, when the batch has them, the manifest's hard-negative captions.

    Args:
        batch: the training batch.
        neg_image: (B,) row whose image is paired with text i as a negative.
        neg_text: (B,) row whose text is paired with image i as a negative.
        pad_id: padding id (rows of different widths are padded to one).

    Returns:
        ``(images, tokens, labels)`` of ``N = 3B`` (``4B`` with manifest negatives) pairs; label 1 = matched.
    """
    images, tokens = batch.images, batch.tokens
    pair_images = [images, images[neg_image], images]
    pair_tokens = [tokens, tokens, tokens[neg_text]]
    if batch.negatives is not None:
        pair_images.append(images)
        pair_tokens.append(batch.negatives)
    width = max(t.shape[1] for t in pair_tokens)
    labels = torch.zeros(len(pair_tokens) * images.shape[0], dtype=torch.long, device=images.device)
    labels[: images.shape[0]] = 1
    return torch.cat(pair_images), torch.cat([pad_columns(t, width, pad_id) for t in pair_tokens]), labels


def itm_term(model: nn.Module, batch: FusionBatch, neg_image: Tensor, neg_text: Tensor) -> Tensor:
    """ITM cross-entropy of ``model.itm_logits`` over :func:`itm_pairs`."""
    images, tokens, labels = itm_pairs(batch, neg_image, neg_text, model.cfg.pad_id)
    return itm_loss(model.itm_logits(images, tokens), labels)


def mlm_term(model: nn.Module, batch: FusionBatch, generator: torch.Generator | None) -> Tensor:
    """MLM cross-entropy of ``model.mlm_logits`` on the masked captions of the true pairs.

    The special ids of coembed's BPE tokenizer (``<pad>`` ... ``<mask>``) are never masked.
    """
    inputs, labels = mask_tokens(batch.tokens, mask_id=SPECIAL_TOKENS.index("<mask>"), vocab_size=model.cfg.vocab_size,
                                 special_ids=range(len(SPECIAL_TOKENS)), generator=generator)
    return mlm_loss(model.mlm_logits(batch.images, inputs), labels)

