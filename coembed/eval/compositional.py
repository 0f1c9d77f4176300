"""Compositional tests: does the image prefer its caption over a minimally edited one (hard negatives),
and do a pair of images and a pair of captions that differ by a swap match up (Winoground)?

Scores come either from embeddings (dot products, :func:`hard_negative_accuracy`) or from any pair
score, e.g. a fusion model's ITM matched probability (:func:`hard_negative_accuracy_from_scores`,
:func:`winoground_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from coembed.eval.retrieval import _check_embeddings, _check_index


def hard_negative_accuracy(
    image_emb: Tensor,
    pos_emb: Tensor,
    neg_emb: Tensor,
    neg_owner: Tensor,
    neg_type: Sequence[str],
    chunk_size: int = 65536,
) -> dict:
    """Pairwise and per-image accuracy of positive captions against their hard negatives.

    Similarities are dot products, so pass L2-normalised embeddings for cosine similarity. A pair
    counts as correct only when the positive scores strictly higher; a tie (for example a negative
    identical to the positive) is a failure.

    Args:
        image_emb: (N, D) image embeddings.
        pos_emb: (N, D) embedding of each image's positive caption.
        neg_emb: (K, D) negative caption embeddings.
        neg_owner: (K,) integer index of the image each negative belongs to.
        neg_type: K negative type names (e.g. ``"swap_attributes"``).
        chunk_size: negatives scored at once (bounds memory to ``chunk_size * D`` floats).

    Returns:
        ``pair_accuracy``: fraction of (image, negative) pairs won by the positive.
        ``image_accuracy``: fraction of images with negatives whose positive beats all of them.
        ``by_type``: ``{type: pair_accuracy}`` over that type's negatives, sorted by type.
        ``n_images``: images with at least one negative (the image_accuracy denominator).
        ``n_negatives``: K.

    Raises:
        ValueError: inconsistent shapes, out-of-range owners, no negatives (names the argument).
    """
    _check_inputs(image_emb, pos_emb, neg_emb, neg_owner, neg_type, chunk_size)
    owner = neg_owner.to(device=image_emb.device, dtype=torch.long)
    won = _pair_wins(image_emb, pos_emb, neg_emb, owner, chunk_size)
    return _summary(won, owner, image_emb.shape[0], neg_type)


def hard_negative_accuracy_from_scores(pos_score: Tensor, neg_score: Tensor, neg_owner: Tensor, neg_type: Sequence[str]) -> dict:
    """:func:`hard_negative_accuracy` from pair scores instead of embeddings (e.g. ITM probabilities).

    Args:
        pos_score: (N,) score of each image with its positive caption.
        neg_score: (K,) score of each negative caption with its image.
        neg_owner: (K,) index of the image (row of ``pos_score``) each negative belongs to.
        neg_type: K negative type names.
    """
    if pos_score.ndim != 1 or neg_score.ndim != 1 or pos_score.numel() == 0:
        raise ValueError(f"pos_score and neg_score must be non-empty 1-D tensors, got {tuple(pos_score.shape)} and {tuple(neg_score.shape)}")
    _check_index("neg_owner", neg_owner, neg_score.shape[0], pos_score.shape[0])
    if isinstance(neg_type, str) or len(neg_type) != neg_score.shape[0]:
        raise ValueError(f"neg_type must be a list of {neg_score.shape[0]} strings, got {neg_type!r:.80}")
    if neg_score.shape[0] == 0:
        raise ValueError("neg_score is empty: there are no negatives to score")
    owner = neg_owner.long()
    return _summary(pos_score[owner] > neg_score, owner, pos_score.shape[0], neg_type)


def winoground_scores(scores: Tensor, types: Sequence[str]) -> dict:
    """Winoground's text, image and group scores, overall and per type.

    Args:
        scores: (P, 2, 2) with ``scores[p, c, i]`` = s(caption c, image i) of item p; caption 0 is
            true of image 0 and caption 1 of image 1.
        types: P type names (e.g. ``"swap_attributes"``).

    Returns:
        ``text``: s(C0,I0) > s(C1,I0) and s(C1,I1) > s(C0,I1); ``image``: s(C0,I0) > s(C0,I1) and
        s(C1,I1) > s(C1,I0); ``group``: both; each a fraction of the items, plus ``n`` and ``by_type``.
    """
    if scores.ndim != 3 or scores.shape[1:] != (2, 2) or scores.shape[0] == 0:
        raise ValueError(f"scores must have shape (P, 2, 2) with P > 0, got {tuple(scores.shape)}")
    if isinstance(types, str) or len(types) != scores.shape[0]:
        raise ValueError(f"types must be a list of {scores.shape[0]} strings")
    s = scores.double()
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    wins = {"text": text, "image": image, "group": text & image}
    out: dict = {name: w.double().mean().item() for name, w in wins.items()}
    out["n"] = int(s.shape[0])
    by_name = {name: _by_type(w, types) for name, w in wins.items()}
    out["by_type"] = {kind: {name: by_name[name][kind] for name in wins} for kind in sorted(set(types))}
    return out


def _summary(won: Tensor, owner: Tensor, n_images: int, neg_type: Sequence[str]) -> dict:
    """The accuracies of :func:`hard_negative_accuracy` from (K,) wins and their images."""
    has_neg = torch.bincount(owner, minlength=n_images) > 0
    all_won = torch.ones(n_images, device=won.device)
    all_won = all_won.scatter_reduce(0, owner, won.float(), "amin", include_self=False)
    return {
        "pair_accuracy": won.double().mean().item(),
        "image_accuracy": all_won[has_neg].double().mean().item(),
        "by_type": _by_type(won, neg_type),
        "n_images": int(has_neg.sum()),
        "n_negatives": int(owner.shape[0]),
    }


def _pair_wins(image_emb: Tensor, pos_emb: Tensor, neg_emb: Tensor, owner: Tensor, chunk_size: int) -> Tensor:
    """(K,) bool: ``<image, positive> > <image, negative>`` for each negative's image."""
    dtype = torch.promote_types(torch.promote_types(image_emb.dtype, neg_emb.dtype), torch.float32)
    wins = []
    for start in range(0, owner.shape[0], chunk_size):
        idx = owner[start : start + chunk_size]
        # One dot product with the difference: an exact duplicate of the positive gives exactly 0,
        # which two separately rounded similarities would not guarantee.
        diff = pos_emb[idx].to(dtype) - neg_emb[start : start + chunk_size].to(dtype)
        wins.append((image_emb[idx].to(dtype) * diff).sum(-1) > 0)
    return torch.cat(wins)


def _by_type(won: Tensor, neg_type: Sequence[str]) -> dict[str, float]:
    """Pair accuracy per negative type, keys sorted."""
    won_list = won.tolist()
    totals: dict[str, list[int]] = {}
    for kind, ok in zip(neg_type, won_list):
        counts = totals.setdefault(kind, [0, 0])
        counts[0] += ok
        counts[1] += 1
    return {kind: totals[kind][0] / totals[kind][1] for kind in sorted(totals)}


def _check_inputs(
    image_emb: Tensor, pos_emb: Tensor, neg_emb: Tensor, neg_owner: Tensor, neg_type: Sequence[str], chunk_size: int
) -> None:
    """Raise ValueError naming the first invalid argument."""
    for name, emb in (("image_emb", image_emb), ("pos_emb", pos_emb), ("neg_emb", neg_emb)):
        _check_embeddings(name, emb)
    if pos_emb.shape != image_emb.shape:
        raise ValueError(f"pos_emb must have image_emb's shape {tuple(image_emb.shape)}, got {tuple(pos_emb.shape)}")
    if neg_emb.shape[1] != image_emb.shape[1]:
        raise ValueError(f"neg_emb has dimension {neg_emb.shape[1]} but image_emb has {image_emb.shape[1]}")
    _check_index("neg_owner", neg_owner, neg_emb.shape[0], image_emb.shape[0])
    if isinstance(neg_type, str) or len(neg_type) != neg_emb.shape[0]:
        raise ValueError(f"neg_type must be a list of {neg_emb.shape[0]} strings, got {neg_type!r:.80}")
    if not all(isinstance(t, str) for t in neg_type):
        raise ValueError("neg_type must contain only strings")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
