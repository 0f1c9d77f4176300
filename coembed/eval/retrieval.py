"""Image-text retrieval recall@k with CLIP_benchmark's definitions, chunked to bound memory.

CLIP_benchmark (``clip_benchmark/metrics/zeroshot_retrieval.py``) scores every text against every
image, takes ``topk`` per query and counts a query as a hit when at least one of its positives is in
the top k; recall@k is the mean over *all* queries. This module reproduces those numbers without
building the full (texts x images) matrix: each chunk of queries computes the rank of its best
positive and a hit is ``rank < k``.

Differences from a literal ``torch.topk`` that only matter in corner cases:

- Ties are broken by index (the lower image / text index ranks first), so results are
  deterministic; ``torch.topk`` leaves the order of equal scores unspecified.
- ``k`` larger than the number of candidates means "all candidates" (``torch.topk`` would raise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_RANK_BLOCK = 128  # query rows counted at once in _rank_of


def retrieval_metrics(
    image_emb: Tensor,
    text_emb: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Text->image and image->text recall@k.

    Scores are dot products, so pass L2-normalised embeddings to rank by cosine similarity.

    Args:
        image_emb: (N, D) image embeddings.
        text_emb: (M, D) text embeddings.
        text_to_image: (M,) integer index into ``image_emb`` of each text's image; an image may
            own several texts or none.
        ks: the k values to report.
        chunk_size: queries scored at once; peak memory is about ``chunk_size * max(N, M)`` floats.

    Returns:
        ``image_retrieval_recall@{k}``: fraction of texts whose image is among their top k images.
        ``text_retrieval_recall@{k}``: fraction of images with at least one of their texts among
        their top k texts. As in CLIP_benchmark, an image without texts counts as a miss.

    Raises:
        ValueError: shapes, dtypes or values of the arguments are invalid (names the argument).
    """
    _check_inputs(image_emb, text_emb, text_to_image, ks, chunk_size)
    dtype = _score_dtype(image_emb.dtype, text_emb.dtype)
    image_emb, text_emb = image_emb.to(dtype), text_emb.to(dtype)
    owner = text_to_image.to(device=image_emb.device, dtype=torch.long)
    text_rank = _text_to_image_ranks(text_emb, image_emb, owner, chunk_size)
    image_rank = _image_to_text_ranks(image_emb, text_emb, owner, chunk_size)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = (text_rank < k).double().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = (image_rank < k).double().mean().item()
    return metrics


def _text_to_image_ranks(text_emb: Tensor, image_emb: Tensor, owner: Tensor, chunk_size: int) -> Tensor:
    """(M,) 0-based rank of each text's image among all images (ties: lower index first)."""
    ranks = []
    for start in range(0, text_emb.shape[0], chunk_size):
        scores = text_emb[start : start + chunk_size] @ image_emb.T
        pos_idx = owner[start : start + chunk_size]
        # Read the positive's score from the same matrix so it compares equal to itself bitwise.
        pos_score = scores.gather(1, pos_idx[:, None]).squeeze(1)
        ranks.append(_rank_of(scores, pos_score, pos_idx))
        del scores  # free this chunk's matrix before the next one is allocated: halves peak memory
    return torch.cat(ranks)


def _image_to_text_ranks(image_emb: Tensor, text_emb: Tensor, owner: Tensor, chunk_size: int) -> Tensor:
    """(N,) 0-based rank of each image's best-ranked text; ``inf`` for images without texts."""
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    text_idx = torch.arange(n_texts, device=owner.device)
    ranks = []
    for start in range(0, n_images, chunk_size):
        end = min(start + chunk_size, n_images)
        scores = image_emb[start:end] @ text_emb.T
        mine = (owner >= start) & (owner < end)
        row, col = owner[mine] - start, text_idx[mine]
        best_score, best_idx, has_text = _best_positive(scores[row, col], row, col, end - start)
        rank = _rank_of(scores, best_score, best_idx).double()
        ranks.append(torch.where(has_text, rank, torch.full_like(rank, float("inf"))))
        del scores  # as above
    return torch.cat(ranks)


def _best_positive(pos_score: Tensor, row: Tensor, col: Tensor, n_rows: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per row, the highest positive score and its column (lowest column among equal scores).

    Args:
        pos_score: (P,) scores of the positive pairs.
        row: (P,) row of each positive pair.
        col: (P,) column of each positive pair.
        n_rows: number of rows.

    Returns:
        (n_rows,) best score, (n_rows,) its column, (n_rows,) bool whether the row has any positive.
    """
    best = torch.full((n_rows,), float("-inf"), dtype=pos_score.dtype, device=pos_score.device)
    best = best.scatter_reduce(0, row, pos_score, "amax", include_self=False)
    at_best = pos_score == best[row]
    big = torch.iinfo(torch.long).max
    best_col = torch.full((n_rows,), big, dtype=torch.long, device=col.device)
    best_col = best_col.scatter_reduce(0, row[at_best], col[at_best], "amin", include_self=False)
    has_pos = torch.bincount(row, minlength=n_rows) > 0
    return best, best_col.where(has_pos, torch.zeros_like(best_col)), has_pos


def _rank_of(scores: Tensor, pos_score: Tensor, pos_idx: Tensor) -> Tensor:
    """(Q,) number of candidates ranked before each query's positive.

    A candidate ranks before the positive when it scores higher, or equal with a lower index; this
    is the positive's position in a stable descending sort, so ``rank < k`` means "in the top k".

    Args:
        scores: (Q, C) query-candidate scores.
        pos_score: (Q,) score of each query's positive.
        pos_idx: (Q,) candidate index of each query's positive.
    """
    # Counting widens the (rows, C) bool matrix to int64 internally, so count a few rows at a time.
    blocks = range(0, scores.shape[0], _RANK_BLOCK)
    return torch.cat([_rank_block(scores[i : i + _RANK_BLOCK], pos_score[i : i + _RANK_BLOCK],
                                  pos_idx[i : i + _RANK_BLOCK]) for i in blocks])


def _rank_block(scores: Tensor, pos_score: Tensor, pos_idx: Tensor) -> Tensor:
    """:func:`_rank_of` for a block of rows small enough for (rows, C) int64 temporaries."""
    rank = (scores > pos_score[:, None]).count_nonzero(1)
    n_equal = (scores == pos_score[:, None]).count_nonzero(1)  # includes the positive itself
    tied = (n_equal > 1).nonzero().squeeze(1)
    if tied.numel():  # exact ties are rare: resolve them by index only on the rows that have them
        cand_idx = torch.arange(scores.shape[1], device=scores.device)
        is_tied = scores[tied] == pos_score[tied, None]
        rank[tied] += (is_tied & (cand_idx[None, :] < pos_idx[tied, None])).count_nonzero(1)
    return rank


def _score_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """Common dtype, at least float32 (half-precision matmul is slow on CPU and coarse for ranking)."""
    return torch.promote_types(torch.promote_types(a, b), torch.float32)


def _check_inputs(
    image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, ks: Sequence[int], chunk_size: int
) -> None:
    """Raise ValueError naming the first invalid argument."""
    for name, emb in (("image_emb", image_emb), ("text_emb", text_emb)):
        _check_embeddings(name, emb)
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"image_emb has dimension {image_emb.shape[1]} but text_emb has {text_emb.shape[1]}"
        )
    _check_index("text_to_image", text_to_image, text_emb.shape[0], image_emb.shape[0])
    if len(ks) == 0 or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def _check_embeddings(name: str, emb: Tensor) -> None:
    """A non-empty, finite, floating (rows, dim) tensor."""
    if not isinstance(emb, Tensor) or emb.ndim != 2:
        shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
        raise ValueError(f"{name} must be a 2-D tensor (rows, dim), got {shape}")
    if not emb.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {emb.dtype}")
    if emb.shape[0] == 0 or emb.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(emb.shape)})")
    if not torch.isfinite(emb).all():
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_index(name: str, index: Tensor, length: int, n_targets: int) -> None:
    """A (length,) integer tensor with values in [0, n_targets)."""
    if not isinstance(index, Tensor) or index.ndim != 1 or index.shape[0] != length:
        shape = tuple(index.shape) if isinstance(index, Tensor) else type(index).__name__
        raise ValueError(f"{name} must be a 1-D tensor of length {length}, got {shape}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {index.dtype}")
    if length and (index.min() < 0 or index.max() >= n_targets):
        raise ValueError(
            f"{name} values must be in [0, {n_targets}), got min {int(index.min())} max {int(index.max())}"
        )
