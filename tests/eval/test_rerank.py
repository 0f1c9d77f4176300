"""ITM re-ranking against brute force: k = all candidates is the full ITM ranking (ranked by naive
loops), k = 1 keeps ITC's R@1, and the cached ALBEF scorer equals calling ``itm_logits`` per pair."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from coembed.eval.pair_scores import cosine_scorer, itm_scorer
from coembed.eval.rerank import recall_from_scores, rerank_matrix, rerank_retrieval
from coembed.eval.retrieval import retrieval_metrics
from coembed.models.fusion import FusionConfig, FusionModel, FusionTextConfig
from coembed.towers.vit import VisionConfig


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = FusionConfig(embed_dim=16, vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2),
                       text=FusionTextConfig(vocab_size=64, context_length=16, width=32, heads=2, layers=1, fusion_layers=1), queue_size=0)
    model = FusionModel(cfg).eval()
    images = torch.randn(6, 3, 32, 32)
    tokens = torch.randint(5, 64, (12, 7))
    tokens[:, 0] = 1
    tokens[::3, 4:] = 0  # some texts shorter than others
    owner = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    return model, images, tokens, owner


def naive_recall(score, owner: torch.Tensor, n_images: int, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@k by sorting each query's candidates in Python (ties: lower index first)."""
    m = len(owner)
    out = {}
    for k in ks:
        t_hits = 0
        for t in range(m):
            order = sorted(range(n_images), key=lambda i: (-score(i, t), i))
            t_hits += int(owner[t]) in order[:k]
        i_hits = 0
        for i in range(n_images):
            order = sorted(range(m), key=lambda t: (-score(i, t), t))
            i_hits += any(int(owner[t]) == i for t in order[:k])
        out[f"image_retrieval_recall@{k}"] = t_hits / m
        out[f"text_retrieval_recall@{k}"] = i_hits / n_images
    return out


def embeddings(model, images, tokens):
    with torch.no_grad():
        return model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)


def test_k_equal_to_all_candidates_is_the_full_itm_ranking(setup) -> None:
    model, images, tokens, owner = setup
    img, txt = embeddings(model, images, tokens)
    with torch.no_grad():
        full = [[model.itm_logits(images[i : i + 1], tokens[t : t + 1]).softmax(-1)[0, 1].item() for t in range(12)] for i in range(6)]
    got = rerank_retrieval(img, txt, owner, itm_scorer(model, images, tokens), k=12, score="itm")
    want = naive_recall(lambda i, t: full[i][t], owner, 6)
    assert {k: v for k, v in got.items() if k != "k"} == pytest.approx(want)
    sims = (img @ txt.T).tolist()
    got = rerank_retrieval(img, txt, owner, itm_scorer(model, images, tokens), k=12, score="itm+itc")
    assert {k: v for k, v in got.items() if k != "k"} == pytest.approx(naive_recall(lambda i, t: full[i][t] + sims[i][t], owner, 6))


def test_k_one_keeps_the_itc_recall_at_one(setup) -> None:
    model, images, tokens, owner = setup
    img, txt = embeddings(model, images, tokens)
    got = rerank_retrieval(img, txt, owner, itm_scorer(model, images, tokens), k=1)
    itc = retrieval_metrics(img, txt, owner, ks=(1,))
    assert got["image_retrieval_recall@1"] == itc["image_retrieval_recall@1"]
    assert got["text_retrieval_recall@1"] == itc["text_retrieval_recall@1"]


def test_only_the_top_k_are_rescored(setup) -> None:
    itc = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    calls = []

    def score(i, t):
        calls.append(list(zip(i.tolist(), t.tolist())))
        return torch.full((len(i),), 0.5)
    out = rerank_matrix(itc, 2, score, queries_are_images=False)
    assert sorted(calls[0]) == [(0, 0), (0, 1), (1, 1), (2, 0)]  # (image, text): text queries are rows
    assert out[0, 1] < -1000 and out[1, 2] < -1000 and out[0, 0] == 0.5


def test_recall_from_scores_matches_retrieval_metrics(setup) -> None:
    _, _, _, owner = setup
    torch.manual_seed(1)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(12, 8), dim=-1)
    s = img @ txt.T
    assert recall_from_scores(s, s.T.contiguous(), owner) == pytest.approx(retrieval_metrics(img, txt, owner))


def test_cached_scorer_equals_itm_logits_per_pair_and_cosine_equals_dot(setup) -> None:
    model, images, tokens, _ = setup
    i, t = torch.tensor([0, 3, 5, 5, 2]), torch.tensor([0, 11, 3, 6, 9])
    cached = itm_scorer(model, images, tokens)(i, t)
    plain = itm_scorer(copy.deepcopy(model), images, tokens, cache=False)(i, t)
    torch.testing.assert_close(cached, plain, atol=1e-5, rtol=1e-5)
    img, txt = embeddings(model, images, tokens)
    torch.testing.assert_close(cosine_scorer(model, images, tokens)(i, t), (img[i] * txt[t]).sum(-1))


def test_bad_arguments_are_named(setup) -> None:
    with pytest.raises(ValueError, match="score"):
        rerank_matrix(torch.zeros(2, 2), 1, lambda i, t: i.float(), score="bogus", queries_are_images=True)
    with pytest.raises(ValueError, match="k must"):
        rerank_matrix(torch.zeros(2, 2), 0, lambda i, t: i.float(), queries_are_images=True)
    with pytest.raises(ValueError, match="itm_logits"):
        itm_scorer(torch.nn.Linear(2, 2), torch.zeros(1), torch.zeros(1))
