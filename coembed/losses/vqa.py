"""VQA losses as pure functions: the answer classifier's soft-score BCE and a generative answerer's
language-modelling loss restricted to the answer tokens.

Soft-score BCE is the VQA-classifier loss of Teney et al. (2018, "Tips and tricks for VQA") as ViLT
and LXMERT use it: every answer of the vocabulary is an independent binary target whose value is the
VQA accuracy that answer would score (1 for an answer all annotators gave), and the loss is
``binary_cross_entropy_with_logits(logits, targets) * num_answers`` (ViLT's scaling: the sum over
answers, averaged over the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from coembed.losses.captioning import IGNORE_INDEX, shifted_cross_entropy


def soft_score_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Soft-score binary cross-entropy of an answer classifier.

    Args:
        logits: ``(B, A)`` answer logits.
        targets: ``(B, A)`` soft scores in [0, 1] (the VQA accuracy of each answer).

    Returns:
        The per-answer BCE summed over answers and averaged over the batch (a float32 scalar).

    Raises:
        ValueError: shapes that differ or are not 2-D, or targets outside [0, 1].
    """
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(f"logits and targets must both be (B, A), got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if targets.numel() and (targets.min() < 0 or targets.max() > 1):
        raise ValueError("targets must be soft scores in [0, 1]")
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * targets.shape[1]


def answer_targets(tokens: Tensor, answer_mask: Tensor) -> Tensor:
    """Next-token targets ``(B, T - 1)`` of ``<sot> question answer <eot>`` rows: the answer tokens and
    their ``<eot>`` (``answer_mask`` True), every question token and padding set to -100."""
    return tokens[:, 1:].masked_fill(~answer_mask[:, 1:], IGNORE_INDEX)


def answer_loss(logits: Tensor, tokens: Tensor, answer_mask: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Teacher-forced next-token cross-entropy on the answer tokens only (the question is read, not scored).

    Args:
        logits: ``(B, T, V)`` decoder logits over the input ``tokens``.
        tokens: ``(B, T)`` ``<sot> question answer <eot>`` rows, padded.
        answer_mask: ``(B, T)`` bool, True at answer tokens and the ``<eot>`` that ends them.
        label_smoothing: as ``torch.nn.functional.cross_entropy``'s argument (BLIP: 0.1).

    Returns:
        The mean loss over the batch's answer tokens (each answer token weighs the same).

    Raises:
        ValueError: mismatched shapes, a non-bool mask, or no answer token at a target position.
    """
    if logits.ndim != 3 or tokens.shape != logits.shape[:2] or answer_mask.shape != tokens.shape:
        raise ValueError(f"logits (B, T, V), tokens (B, T) and answer_mask (B, T) must match, got {tuple(logits.shape)}, "
                         f"{tuple(tokens.shape)} and {tuple(answer_mask.shape)}")
    if answer_mask.dtype != torch.bool:
        raise ValueError(f"answer_mask must be a bool tensor, got {answer_mask.dtype}")
    targets = answer_targets(tokens, answer_mask)  # (B, T - 1)
    if not (targets != IGNORE_INDEX).any():
        raise ValueError("answer_mask marks no answer token after the first position")
    return shifted_cross_entropy(logits, targets, label_smoothing)
