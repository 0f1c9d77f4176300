"""Property-based fuzzing of the retrieval and zero-shot metrics against naive Python loops.

Tie rule. CLIP_benchmark (``clip_benchmark/metrics/zeroshot_retrieval.py::recall_at_k`` and
``zeroshot_classification.py::accuracy``) takes ``torch.topk`` of the scores, which leaves the order
of equal scores unspecified; OpenCLIP's own retrieval metric counts ``scores > positive`` ranks. coembed
fixes one deterministic instance: a candidate ranks ahead of the positive when it scores higher, or
equal with a lower index (a stable descending sort). The properties check exactly that rule on
matrices built from small integers (so ties are common and dot products exact), that the value lies
between the pessimistic (every tie ahead) and optimistic (no tie ahead) counts, that it equals a
literal ``topk`` recipe whenever there are no ties, bounds 0..1, monotonicity in k, and invariance
under permuting the gallery consistently (tie-free cases; with ties the index rule moves by design).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from coembed.eval.rerank import recall_from_scores
from coembed.eval.retrieval import retrieval_metrics
from coembed.eval.zeroshot import zeroshot_metrics

CASES: Counter[str] = Counter()
KS = (1, 2, 3, 5, 10, 50)


def fuzz(max_examples: int):
    """The CI profile: reproducible (derandomize), no per-example deadline, a fixed example budget."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def retrieval_case(draw, ties: bool = True):
    """(image_emb, text_emb, text_to_image): integer entries in [-2, 2] (ties) or random floats."""
    n_images, n_texts, dim = draw(st.integers(1, 12)), draw(st.integers(1, 20)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if ties:
        image = torch.randint(-2, 3, (n_images, dim), generator=g).double()
        text = torch.randint(-2, 3, (n_texts, dim), generator=g).double()  # zero rows tie with everything
    else:
        image, text = torch.randn(n_images, dim, generator=g, dtype=torch.float64), torch.randn(n_texts, dim, generator=g, dtype=torch.float64)
    owner = torch.tensor(draw(st.lists(st.integers(0, n_images - 1), min_size=n_texts, max_size=n_texts)))
    return image, text, owner


def naive_ranks(scores: np.ndarray, positives: list[set[int]], mode: str) -> list[float]:
    """Per query, the 0-based rank of its best positive: ``index`` (ties by index), ``pessimistic``
    (every tie ahead) or ``optimistic`` (no tie ahead); inf without positives."""
    ranks = []
    for q, pos in enumerate(positives):
        best = float("inf")
        for p in pos:
            s = scores[q]
            ahead = sum(1 for c in range(len(s)) if s[c] > s[p] or (s[c] == s[p] and c != p and (
                mode == "pessimistic" or (mode == "index" and c < p))))
            best = min(best, ahead)
        ranks.append(best)
    return ranks


def naive_metrics(image: torch.Tensor, text: torch.Tensor, owner: torch.Tensor, mode: str = "index") -> dict[str, float]:
    scores = (text @ image.T).numpy()  # exact: small integers, or the same float64 products
    owners = owner.tolist()
    t2i = naive_ranks(scores, [{o} for o in owners], mode)
    i2t = naive_ranks(scores.T, [{t for t, o in enumerate(owners) if o == i} for i in range(len(image))], mode)
    out = {}
    for k in KS:
        out[f"image_retrieval_recall@{k}"] = sum(r < k for r in t2i) / len(t2i)
        out[f"text_retrieval_recall@{k}"] = sum(r < k for r in i2t) / len(i2t)
    return out


def topk_recipe(image: torch.Tensor, text: torch.Tensor, owner: torch.Tensor) -> dict[str, float]:
    """CLIP_benchmark's literal recipe: dense positives, torch.topk, recall > 0, mean over queries."""
    scores = text @ image.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(scores)), owner] = True
    out = {}
    for k in KS:
        for name, s, p in (("image", scores, positive), ("text", scores.T, positive.T)):
            top = s.topk(min(k, s.shape[1]), dim=1).indices
            out[f"{name}_retrieval_recall@{k}"] = (p.gather(1, top).sum(1) > 0).double().mean().item()
    return out


@fuzz(250)
@given(case=retrieval_case(), chunk=st.integers(1, 25))
def test_recall_equals_naive_loop_with_ties_for_any_chunk(case, chunk: int) -> None:
    CASES["recall vs naive (ties)"] += 1
    image, text, owner = case
    got = retrieval_metrics(image, text, owner, ks=KS, chunk_size=chunk)
    assert got == naive_metrics(image, text, owner)
    low, high = naive_metrics(image, text, owner, "pessimistic"), naive_metrics(image, text, owner, "optimistic")
    for key, value in got.items():
        assert 0.0 <= low[key] <= value <= high[key] <= 1.0
    for direction in ("image", "text"):
        values = [got[f"{direction}_retrieval_recall@{k}"] for k in KS]
        assert values == sorted(values)  # monotone in k
    # The same rule from full score matrices (rerank's entry point).
    assert recall_from_scores(image @ text.T, text @ image.T, owner, ks=KS) == got


@fuzz(150)
@given(case=retrieval_case(ties=False), data=st.data())
def test_recall_without_ties_equals_topk_and_ignores_gallery_order(case, data) -> None:
    CASES["recall vs topk + permutation"] += 1
    image, text, owner = case
    got = retrieval_metrics(image, text, owner, ks=KS)
    assert got == pytest.approx(topk_recipe(image, text, owner), abs=1e-12)
    perm_i = torch.tensor(data.draw(st.permutations(range(len(image)))), dtype=torch.long)
    perm_t = torch.tensor(data.draw(st.permutations(range(len(text)))), dtype=torch.long)
    inverse = torch.argsort(perm_i)  # image perm_i[j] is now at row j
    permuted = retrieval_metrics(image[perm_i], text[perm_t], inverse[owner[perm_t]], ks=KS)
    assert permuted == pytest.approx(got, abs=1e-12)


@st.composite
def logits_case(draw):
    n, c = draw(st.integers(1, 30), label="rows"), draw(st.integers(1, 9), label="classes")
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if draw(st.booleans()):
        logits = torch.randint(-1, 2, (n, c), generator=g).float()  # many ties
    else:
        logits = torch.randn(n, c, generator=g) * draw(st.sampled_from([1e-3, 1.0, 100.0, 1e30]))
    labels = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    return logits, labels


@fuzz(300)
@given(case=logits_case())
def test_zeroshot_metrics_equal_naive_loops(case) -> None:
    CASES["zero-shot vs naive"] += 1
    logits, labels = case
    got = zeroshot_metrics(logits, labels)
    rows = logits.tolist()
    ranks = [sum(1 for j, v in enumerate(row) if v > row[y] or (v == row[y] and j < y)) for row, y in zip(rows, labels.tolist())]
    k5 = min(5, logits.shape[1])
    assert got["acc1"] == sum(r < 1 for r in ranks) / len(ranks)
    assert got["acc5"] == sum(r < k5 for r in ranks) / len(ranks)
    assert 0.0 <= got["acc1"] <= got["acc5"] <= 1.0
    # Mean per-class recall with argmax (first maximum) predictions, as sklearn's balanced accuracy.
    pred = [max(range(len(row)), key=lambda j: (row[j], -j)) for row in rows]
    per_class = {}
    for p, y in zip(pred, labels.tolist()):
        per_class.setdefault(y, []).append(p == y)
    expected = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
    assert got["mean_per_class_recall"] == pytest.approx(expected, abs=1e-12)
    assert got["acc1"] == pytest.approx(sum(p == y for p, y in zip(pred, labels.tolist())) / len(pred))


@fuzz(100)
@given(case=logits_case(), data=st.data())
def test_zeroshot_metrics_ignore_class_order_without_ties(case, data) -> None:
    CASES["zero-shot permutation"] += 1
    logits, labels = case
    assume(all(len(set(row)) == len(row) for row in logits.tolist()))
    perm = torch.tensor(data.draw(st.permutations(range(logits.shape[1]))), dtype=torch.long)
    got = zeroshot_metrics(logits[:, perm], torch.argsort(perm)[labels])
    assert got == pytest.approx(zeroshot_metrics(logits, labels), abs=1e-12)


def test_zz_report_cases() -> None:
    print("\nfuzz cases (metrics):", dict(CASES), "total", sum(CASES.values()))
