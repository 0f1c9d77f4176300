"""Scores of (image, text) pairs from any model: ITM matched probability or embedding cosine.

A model with ``itm_logits(images, tokens)`` (fusion families: ALBEF/BLIP, ViLT, VLMo) is scored by its
matching head, ``softmax(logits)[:, 1]``; any model also has ``encode_image`` / ``encode_text`` and
can be scored by the cosine of its embeddings (ITC). A model that also exposes the separable pieces
of ALBEF (``image_tokens``, ``encode_text_tokens``, ``fuse``, ``itm_head_logits``) is scored without
re-running its unimodal encoders for every pair: each image and each text is encoded once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCORES = ("itm", "cosine")
_SEPARABLE = ("image_tokens", "encode_text_tokens", "fuse", "itm_head_logits")

PairScoreFn = Callable[[Tensor, Tensor], Tensor]  # (image rows (P,), text rows (P,)) -> (P,) scores


def has_itm(model: nn.Module) -> bool:
    return callable(getattr(model, "itm_logits", None))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _chunked(fn: Callable[[Tensor, Tensor], Tensor], batch_size: int) -> PairScoreFn:
    @torch.no_grad()
    def score(image_rows: Tensor, text_rows: Tensor) -> Tensor:
        if image_rows.shape != text_rows.shape or image_rows.ndim != 1:
            raise ValueError(f"image_rows and text_rows must be equal 1-D shapes, got {tuple(image_rows.shape)} and {tuple(text_rows.shape)}")
        out = [fn(image_rows[i : i + batch_size], text_rows[i : i + batch_size]).float().cpu()
               for i in range(0, image_rows.shape[0], batch_size)]
        return torch.cat(out) if out else torch.zeros(0)
    return score


def itm_scorer(model: nn.Module, images: Tensor, tokens: Tensor, *, batch_size: int = 256, cache: bool = True) -> PairScoreFn:
    """Matched probability of pairs (``images[i]``, ``tokens[t]``) through ``model.itm_logits``.

    Args:
        images: (N, 3, H, W) preprocessed images.
        tokens: (M, T) token ids.
        cache: encode each image and text once when the model exposes the separable ALBEF interface
            (same scores up to float rounding; False always calls ``itm_logits``).
    """
    if not has_itm(model):
        raise ValueError(f"{type(model).__name__} has no itm_logits; score it with 'cosine'")
    device = _device(model)
    if cache and all(callable(getattr(model, name, None)) for name in _SEPARABLE):
        return _chunked(_cached_itm(model, images, tokens, batch_size), batch_size)

    def score(i: Tensor, t: Tensor) -> Tensor:
        return model.itm_logits(images[i].to(device), tokens[t].to(device)).float().softmax(dim=-1)[:, 1]
    return _chunked(score, batch_size)


@torch.no_grad()
def _cached_itm(model: nn.Module, images: Tensor, tokens: Tensor, batch_size: int) -> Callable[[Tensor, Tensor], Tensor]:
    device = _device(model)
    image_tokens = torch.cat([model.image_tokens(images[i : i + batch_size].to(device)) for i in range(0, len(images), batch_size)])
    states, masks = [], []
    for i in range(0, len(tokens), batch_size):
        hidden, mask = model.encode_text_tokens(tokens[i : i + batch_size].to(device))
        states.append(hidden)
        masks.append(mask)
    length = max(s.shape[1] for s in states)
    hidden = torch.cat([F.pad(s, (0, 0, 0, length - s.shape[1])) for s in states])  # (M, length, W)
    mask = torch.cat([F.pad(m, (0, length - m.shape[1]), value=False) for m in masks])  # (M, length)

    def score(i: Tensor, t: Tensor) -> Tensor:
        used = int(mask[t].sum(dim=1).max())  # padding columns beyond every row's length change nothing
        fused = model.fuse(hidden[t, :used], mask[t, :used], image_tokens[i])
        return model.itm_head_logits(fused).float().softmax(dim=-1)[:, 1]
    return score


@torch.no_grad()
def cosine_scorer(model: nn.Module, images: Tensor, tokens: Tensor, *, batch_size: int = 256) -> PairScoreFn:
    """Cosine similarity of the normalised ``encode_image`` / ``encode_text`` embeddings of pairs."""
    device = _device(model)
    image_emb = torch.cat([model.encode_image(images[i : i + batch_size].to(device), normalize=True).float().cpu()
                           for i in range(0, len(images), batch_size)])
    text_emb = torch.cat([model.encode_text(tokens[i : i + batch_size].to(device), normalize=True).float().cpu()
                          for i in range(0, len(tokens), batch_size)])
    return _chunked(lambda i, t: (image_emb[i] * text_emb[t]).sum(-1), batch_size)


def pair_scorer(model: nn.Module, images: Tensor, tokens: Tensor, score: str = "itm", *, batch_size: int = 256) -> PairScoreFn:
    """The ``score`` (one of :data:`SCORES`) of pairs of these images and texts."""
    if score == "itm":
        return itm_scorer(model, images, tokens, batch_size=batch_size)
    if score == "cosine":
        return cosine_scorer(model, images, tokens, batch_size=batch_size)
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")
