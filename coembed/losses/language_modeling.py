"""Next-token (language-modelling) loss as a pure function of logits and the ids they were computed over.

Teacher forcing as in Hugging Face's causal-LM loss: ``logits`` and ``tokens`` have the same length,
the logits at position ``t`` predict the token at ``t + 1``, padding targets do not count, and the loss
is the mean over the real target tokens of the whole batch. (Same semantics as the captioners'
``caption_loss``; the bridges to a language model and the ``causal_lm`` family use this one.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def next_token_targets(tokens: Tensor, pad_id: int) -> Tensor:
    """``tokens[:, 1:]`` with padding replaced by :data:`IGNORE_INDEX`: (B, T) -> (B, T - 1)."""
    targets = tokens[:, 1:].clone()
    targets[targets == pad_id] = IGNORE_INDEX
    return targets


def next_token_loss(logits: Tensor, tokens: Tensor, pad_id: int) -> Tensor:
    """Mean next-token cross-entropy over the real targets.

    Args:
        logits: ``(B, T, V)`` logits computed over ``tokens``.
        tokens: ``(B, T)`` ids; also the targets, shifted by one.
        pad_id: padding id; padding targets are ignored.

    Raises:
        ValueError: mismatched shapes, fewer than two positions, or no real target.
    """
    if logits.ndim != 3 or tokens.ndim != 2 or logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits must be (B, T, V) over tokens (B, T), got {tuple(logits.shape)} and {tuple(tokens.shape)}")
    if tokens.shape[1] < 2:
        raise ValueError(f"tokens need at least 2 positions (an input and a target), got {tokens.shape[1]}")
    targets = next_token_targets(tokens, pad_id)  # (B, T - 1)
    if not bool((targets != IGNORE_INDEX).any()):
        raise ValueError("no token to predict: every target is padding")
    shifted = logits[:, :-1].float()  # (B, T - 1, V): position t predicts token t + 1
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
