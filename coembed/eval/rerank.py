"""Retrieval with ITM re-ranking, as ALBEF and BLIP evaluate it.

For every query (an image, or a text) the ITC similarities pick the top ``k`` candidates; the fusion
encoder re-scores exactly those pairs and every other candidate ranks below them. The score of a
re-ranked pair is

- ``"itm"``: the ITM matched probability (ALBEF ranks by its matched output);
- ``"itm+itc"``: matched probability plus the ITC cosine similarity (BLIP adds the two).

Recall@K then follows :mod:`coembed.eval.retrieval` (CLIP_benchmark): a text query is a hit when its
image is in its top K, an image query when any of its captions is; ties go to the lower index. With
``k`` = all candidates this is the full ITM ranking; with ``k = 1`` R@1 is the ITC R@1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from coembed.eval.pair_scores import PairScoreFn
from coembed.eval.retrieval import _best_positive, _check_index, _rank_of

RERANK_SCORES = ("itm", "itm+itc")
BELOW = -1e4  # score of the candidates that were not re-ranked: below any re-ranked one


def rerank_matrix(itc: Tensor, k: int, pair_score: PairScoreFn, *, score: str = "itm", queries_are_images: bool) -> Tensor:
    """Scores (Q, C): the top-``k`` ITC candidates of every query re-scored, :data:`BELOW` elsewhere.

    Args:
        itc: (Q, C) cosine similarities of queries and candidates.
        k: candidates re-scored per query (clipped to C).
        pair_score: scores of (image rows, text rows), e.g. from :func:`coembed.eval.pair_scores.itm_scorer`.
        score: one of :data:`RERANK_SCORES`.
        queries_are_images: rows are images (image-to-text retrieval) or texts (text-to-image).
    """
    if score not in RERANK_SCORES:
        raise ValueError(f"score must be one of {RERANK_SCORES}, got {score!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    q, c = itc.shape
    top = itc.topk(min(k, c), dim=1).indices  # (Q, k)
    rows = torch.arange(q)[:, None].expand_as(top).reshape(-1)  # (Q*k,)
    cols = top.reshape(-1)
    pairs = (rows, cols) if queries_are_images else (cols, rows)
    new = pair_score(*pairs).to(itc.dtype)
    if score == "itm+itc":
        new = new + itc[rows, cols]
    out = torch.full_like(itc, BELOW)
    out[rows, cols] = new
    return out


def recall_from_scores(i2t: Tensor, t2i: Tensor, text_to_image: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """CLIP_benchmark recall@k from full score matrices ``i2t`` (N, M) and ``t2i`` (M, N)."""
    n, m = i2t.shape
    if t2i.shape != (m, n):
        raise ValueError(f"t2i must have shape ({m}, {n}), got {tuple(t2i.shape)}")
    _check_index("text_to_image", text_to_image, m, n)
    owner = text_to_image.long()
    text_rank = _rank_of(t2i, t2i.gather(1, owner[:, None]).squeeze(1), owner)
    col = torch.arange(m)
    best, best_col, has = _best_positive(i2t[owner, col], owner, col, n)
    image_rank = torch.where(has, _rank_of(i2t, best, best_col).double(), torch.full((n,), float("inf"), dtype=torch.double))
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (text_rank < k).double().mean().item()
        out[f"text_retrieval_recall@{k}"] = (image_rank < k).double().mean().item()
    return out


def rerank_retrieval(image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, pair_score: PairScoreFn, *, k: int,
                     score: str = "itm", ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K both ways after re-ranking each query's ITC top ``k``.

    Args:
        image_emb: (N, D) and text_emb: (M, D) normalised ITC embeddings.
        text_to_image: (M,) image row of every text.
        pair_score: scores of (image rows, text rows) pairs.
        k: candidates re-ranked per query.
        score: ``"itm"`` or ``"itm+itc"``.
    """
    sims = image_emb.float() @ text_emb.float().T  # (N, M)
    i2t = rerank_matrix(sims, k, pair_score, score=score, queries_are_images=True)
    t2i = rerank_matrix(sims.T.contiguous(), k, pair_score, score=score, queries_are_images=False)
    return {**recall_from_scores(i2t, t2i, text_to_image, ks), "k": k}
