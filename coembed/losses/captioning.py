"""Captioning (language-modelling) loss as a pure function of decoder logits and the caption ids.

Teacher forcing: the decoder reads the caption ``<sot> w1 ... wn <eot> <pad>...`` and its logits at
position ``t`` predict the token at ``t + 1``. As Hugging Face's causal-LM loss, the shift happens
here: ``logits`` and ``tokens`` have the same length, ``logits[:, :-1]`` is scored against
``tokens[:, 1:]``, padding targets are ignored, and the loss is the mean over the real target tokens
of the whole batch (every caption token weighs the same, as CoCa's and BLIP's ``CrossEntropyLoss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def caption_targets(tokens: Tensor, pad_id: int) -> Tensor:
    """The next-token targets of ``tokens`` (B, T): ``tokens[:, 1:]`` with padding set to -100, (B, T - 1)."""
    targets = tokens[:, 1:].clone()
    targets[targets == pad_id] = IGNORE_INDEX
    return targets


def caption_loss(logits: Tensor, tokens: Tensor, pad_id: int, label_smoothing: float = 0.0) -> Tensor:
    """Next-token cross-entropy of a captioning decoder.

    Args:
        logits: ``(B, T, V)`` decoder logits over the input ``tokens``.
        tokens: ``(B, T)`` the caption ids the decoder read (they are also the targets, shifted by one).
        pad_id: padding id; padding targets do not count.
        label_smoothing: share of the target mass spread uniformly over the vocabulary (BLIP: 0.1), as
            ``torch.nn.functional.cross_entropy``'s argument.

    Returns:
        The mean loss over the real target tokens, a float32 (or wider) scalar.

    Raises:
        ValueError: shapes that do not match, fewer than two positions, no real target token, or a
            label smoothing outside [0, 1).
    """
    if logits.ndim != 3 or tokens.ndim != 2 or logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits must be (B, T, V) over tokens (B, T), got {tuple(logits.shape)} and {tuple(tokens.shape)}")
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens need at least 2 positions (an input and a target), got {tokens.shape[1]}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    targets = caption_targets(tokens, pad_id)  # (B, T - 1)
    if not (targets != IGNORE_INDEX).any():
        raise ValueError("the captions hold no token to predict (every target is padding)")
    return shifted_cross_entropy(logits, targets, label_smoothing)


def shifted_cross_entropy(logits: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of position t's logits ``(B, T, V)`` against ``targets[:, t]`` ``(B, T - 1)`` (the
    token at t + 1, or :data:`IGNORE_INDEX`), in at least float32: the next-token loss every head shares."""
    shifted = logits[:, :-1]  # (B, T - 1, V): position t predicts token t + 1
    shifted = shifted.to(torch.promote_types(shifted.dtype, torch.float32))
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX,
                           label_smoothing=label_smoothing)
