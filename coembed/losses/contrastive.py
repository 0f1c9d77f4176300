"""Contrastive image-text losses as pure functions of a batch of paired embeddings.

Row ``i`` of ``image_emb`` and row ``i`` of ``text_emb`` are a positive pair; every other row of the
batch is a negative. Embeddings are expected to be L2-normalised already (the losses do not
normalise, so gradients flow exactly through what the caller passes).

Precision: the similarity matmul runs in the inputs' dtype (bf16/fp16 under autocast, which is where
the cost is); the ``(B, B)`` similarities are then promoted to at least float32 *before* the scale and
bias are applied (a bf16 logit near 100 would otherwise be rounded to a multiple of 0.5) and before
the softmax / log-sigmoid / hinge reductions. Logits and losses are therefore float32 for
half-precision inputs and float64 for float64 inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["clip_logits", "clip_loss", "negclip_loss", "siglip_loss", "triplet_loss"]


def _check_pair(image_emb: Tensor, text_emb: Tensor) -> None:
    if image_emb.ndim != 2:
        raise ValueError(f"image_emb must be 2-D (batch, dim), got shape {tuple(image_emb.shape)}")
    if text_emb.ndim != 2:
        raise ValueError(f"text_emb must be 2-D (batch, dim), got shape {tuple(text_emb.shape)}")
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            "image_emb and text_emb must have the same shape, "
            f"got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    if image_emb.shape[0] == 0:
        raise ValueError("image_emb and text_emb must hold at least one pair, got batch size 0")


def _check_scalar(value: Tensor | float, name: str) -> None:
    if isinstance(value, Tensor) and value.numel() != 1:
        raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")


def _similarities(image_emb: Tensor, text_emb: Tensor) -> Tensor:
    """``(B, B)`` dot products, computed in the inputs' dtype and returned in at least float32."""
    sims = image_emb @ text_emb.T
    return sims.to(torch.promote_types(sims.dtype, torch.float32))


def clip_logits(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> tuple[Tensor, Tensor]:
    """Scaled cosine-similarity logits in both directions.

    Args:
        image_emb: ``(B, D)`` normalised image embeddings.
        text_emb: ``(B, D)`` normalised text embeddings.
        logit_scale: The multiplier (the exponential of the learned log-scale), scalar.

    Returns:
        ``(logits_per_image, logits_per_text)``, each ``(B, B)`` in at least float32; the second is
        the transpose of the first (row ``j`` scores text ``j`` against every image).

    Raises:
        ValueError: the embeddings are not 2-D, differ in shape or are empty, or the scale is not
            a scalar.
    """
    _check_pair(image_emb, text_emb)
    _check_scalar(logit_scale, "logit_scale")
    logits_per_image = logit_scale * _similarities(image_emb, text_emb)
    return logits_per_image, logits_per_image.T


def clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE loss of CLIP (Radford et al., 2021), as OpenCLIP's ``ClipLoss``.

    The mean of the image-to-text and text-to-image cross-entropies, each averaged over the batch,
    with the matching pair as the target class.

    Args:
        image_emb: ``(B, D)`` normalised image embeddings.
        text_emb: ``(B, D)`` normalised text embeddings.
        logit_scale: The multiplier (``exp`` of the learned log-scale already taken), scalar.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).
    """
    logits_per_image, logits_per_text = clip_logits(image_emb, text_emb, logit_scale)
    targets = torch.arange(image_emb.shape[0], device=image_emb.device)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


def negclip_loss(image_emb: Tensor, text_emb: Tensor, negative_emb: Tensor, logit_scale: Tensor | float) -> Tensor:
    """CLIP loss with extra hard-negative captions (NegCLIP, Yuksekgonul et al., 2023).

    Image-to-text: each image's softmax runs over the ``B`` captions of the batch *and* the ``N``
    negative captions (all of them false for every image). Text-to-image: as in :func:`clip_loss`
    (negative captions have no image to retrieve). With ``N = 0`` this is :func:`clip_loss`.

    Args:
        image_emb: ``(B, D)`` normalised image embeddings.
        text_emb: ``(B, D)`` normalised captions, row ``i`` true of image ``i``.
        negative_emb: ``(N, D)`` normalised false captions.
        logit_scale: The multiplier (``exp`` of the learned log-scale), scalar.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).
    """
    _check_pair(image_emb, text_emb)
    _check_scalar(logit_scale, "logit_scale")
    if negative_emb.ndim != 2 or negative_emb.shape[1] != image_emb.shape[1]:
        raise ValueError(f"negative_emb must be (N, {image_emb.shape[1]}), got shape {tuple(negative_emb.shape)}")
    texts = torch.cat([text_emb, negative_emb.to(text_emb.dtype)])  # (B + N, D)
    logits_per_image = logit_scale * _similarities(image_emb, texts)  # (B, B + N)
    logits_per_text = logits_per_image[:, : image_emb.shape[0]].T  # (B, B)
    targets = torch.arange(image_emb.shape[0], device=image_emb.device)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_text, targets)) / 2


def siglip_loss(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float
) -> Tensor:
    """Pairwise sigmoid loss of SigLIP (Zhai et al., 2023), as OpenCLIP's ``SigLipLoss``.

    ``-sum_ij logsigmoid(label_ij * (scale * <img_i, txt_j> + bias)) / B`` with ``label_ij`` = +1 on
    the diagonal and -1 elsewhere: a sum over all ``B * B`` pairs, divided by the batch size.

    Args:
        image_emb: ``(B, D)`` normalised image embeddings.
        text_emb: ``(B, D)`` normalised text embeddings.
        logit_scale: The multiplier (``exp`` of the learned log-scale), scalar.
        logit_bias: The learned additive bias, scalar.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).
    """
    _check_scalar(logit_bias, "logit_bias")
    logits, _ = clip_logits(image_emb, text_emb, logit_scale)
    logits = logits + logit_bias
    batch = image_emb.shape[0]
    labels = 2 * torch.eye(batch, dtype=logits.dtype, device=logits.device) - 1
    return -F.logsigmoid(labels * logits).sum() / batch


def triplet_loss(image_emb: Tensor, text_emb: Tensor, margin: float = 0.2, hardest: bool = True) -> Tensor:
    """Bidirectional hinge (triplet) ranking loss of VSE++ (Faghri et al., 2018).

    With ``s_ij = <img_i, txt_j>``, each image ``i`` is an anchor against the negative captions
    ``j != i`` (hinge ``[margin + s_ij - s_ii]+``) and each caption ``j`` is an anchor against the
    negative images ``i != j`` (hinge ``[margin + s_ij - s_jj]+``). With ``hardest=True`` (VSE++)
    each anchor keeps only its largest hinge (the hardest in-batch negative); with ``hardest=False``
    (VSE0) the hinges of all negatives are summed. The result is the sum of both directions over all
    anchors divided by the batch size, i.e. the mean over pairs of (image-anchor + caption-anchor)
    cost; VSE++ itself sums without dividing, which only rescales the learning rate.
    A batch of one pair has no negatives and a loss of 0.

    Args:
        image_emb: ``(B, D)`` normalised image embeddings.
        text_emb: ``(B, D)`` normalised text embeddings.
        margin: Required gap between positive and negative similarity, >= 0.
        hardest: Use only the hardest negative per anchor.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs).

    Raises:
        ValueError: bad embedding shapes or a negative margin.
    """
    _check_pair(image_emb, text_emb)
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    scores = _similarities(image_emb, text_emb)
    positives = scores.diagonal()
    is_positive = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    cost_caption = (margin + scores - positives[:, None]).clamp(min=0).masked_fill(is_positive, 0)
    cost_image = (margin + scores - positives[None, :]).clamp(min=0).masked_fill(is_positive, 0)
    if hardest:
        total = cost_caption.max(dim=1).values.sum() + cost_image.max(dim=0).values.sum()
    else:
        total = cost_caption.sum() + cost_image.sum()
    return total / scores.shape[0]
