"""retrieval_metrics against a naive python loop and a literal topk (CLIP_benchmark-style) reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coembed.eval.retrieval import retrieval_metrics


def naive_retrieval(image_emb, text_emb, text_to_image, ks):
    """Sort every query's candidates by (score desc, index asc) and look for a positive in the top k."""
    img, txt = image_emb.double().numpy(), text_emb.double().numpy()
    owner = [int(o) for o in text_to_image]
    out = {}
    for k in ks:
        hits = 0
        for t in range(len(txt)):
            scores = [float(np.dot(txt[t], img[i])) for i in range(len(img))]
            order = sorted(range(len(img)), key=lambda i: (-scores[i], i))
            hits += owner[t] in order[:k]
        out[f"image_retrieval_recall@{k}"] = hits / len(txt)
        hits = 0
        for i in range(len(img)):
            scores = [float(np.dot(img[i], txt[t])) for t in range(len(txt))]
            order = sorted(range(len(txt)), key=lambda t: (-scores[t], t))
            hits += any(owner[t] == i for t in order[:k])
        out[f"text_retrieval_recall@{k}"] = hits / len(img)
    return out


def topk_reference(image_emb, text_emb, text_to_image, ks):
    """CLIP_benchmark's recipe: dense positive matrix, torch.topk, recall > 0, mean over queries."""
    scores = text_emb @ image_emb.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(scores)), text_to_image] = True
    out = {}
    for k in ks:
        for name, s, p in (("image", scores, positive), ("text", scores.T, positive.T)):
            top = s.topk(min(k, s.shape[1]), dim=1).indices
            n_true = p.gather(1, top).sum(1)
            recall = n_true / p.sum(1)  # 0/0 = nan for an image without texts -> not > 0 -> miss
            out[f"{name}_retrieval_recall@{k}"] = (recall > 0).float().mean().item()
    return out


def random_case(seed, n_images=23, n_texts=57, dim=8):
    g = torch.Generator().manual_seed(seed)
    image_emb = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=g, dtype=torch.float64), dim=1)
    text_to_image = torch.randint(0, n_images - 1, (n_texts,), generator=g)  # last image owns no text
    # Texts near their image so recall is neither 0 nor 1.
    text_emb = image_emb[text_to_image] + 0.9 * torch.randn(n_texts, dim, generator=g, dtype=torch.float64)
    return image_emb, torch.nn.functional.normalize(text_emb, dim=1), text_to_image


KS = (1, 2, 5, 10, 100, 1000)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_matches_naive_loop(seed, chunk_size):
    image_emb, text_emb, owner = random_case(seed)
    assert (torch.bincount(owner, minlength=23) > 1).any()  # several texts per image
    got = retrieval_metrics(image_emb, text_emb, owner, ks=KS, chunk_size=chunk_size)
    want = naive_retrieval(image_emb, text_emb, owner, KS)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert 0 < got["image_retrieval_recall@1"] < 1
    assert 0 < got["text_retrieval_recall@1"] < 1


@pytest.mark.parametrize("chunk_size", [16, 333, 4096])  # > 128 rows exercises row blocks in ranking
def test_matches_topk_reference_including_image_without_text(chunk_size):
    image_emb, text_emb, owner = random_case(5, n_images=300, n_texts=700, dim=16)
    got = retrieval_metrics(image_emb, text_emb, owner, ks=KS, chunk_size=chunk_size)
    want = topk_reference(image_emb, text_emb, owner, KS)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    # k >= number of candidates: every text finds its image; text-less images are still misses.
    n_with_text = int((torch.bincount(owner, minlength=300) > 0).sum())
    assert n_with_text < 300
    assert got["image_retrieval_recall@1000"] == 1.0
    assert got["text_retrieval_recall@1000"] == pytest.approx(n_with_text / 300)


def test_hand_made_case():
    image_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    text_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    owner = torch.tensor([0, 0, 1])
    got = retrieval_metrics(image_emb, text_emb, owner, ks=(1, 2, 5))
    assert got == pytest.approx({
        "image_retrieval_recall@1": 2 / 3,  # text 1 prefers image 1 over its image 0
        "image_retrieval_recall@2": 1.0,
        "image_retrieval_recall@5": 1.0,
        "text_retrieval_recall@1": 1 / 3,  # image 1 prefers text 1 over its text 2; image 2 has no text
        "text_retrieval_recall@2": 2 / 3,
        "text_retrieval_recall@5": 2 / 3,
    })
    assert list(got) == [
        "image_retrieval_recall@1", "text_retrieval_recall@1",
        "image_retrieval_recall@2", "text_retrieval_recall@2",
        "image_retrieval_recall@5", "text_retrieval_recall@5",
    ]


def test_ties_broken_by_index():
    image_emb = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # identical images
    text_emb = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # identical texts
    first = retrieval_metrics(image_emb, text_emb, torch.tensor([0, 0]), ks=(1, 2))
    assert first["image_retrieval_recall@1"] == 1.0  # image 0 wins the tie
    assert first["text_retrieval_recall@1"] == 0.5  # image 1 owns no text
    second = retrieval_metrics(image_emb, text_emb, torch.tensor([1, 1]), ks=(1, 2))
    assert second["image_retrieval_recall@1"] == 0.0  # image 1 loses the tie to image 0
    assert second["image_retrieval_recall@2"] == 1.0
    mixed = retrieval_metrics(image_emb, text_emb, torch.tensor([1, 0]), ks=(1,))
    # image 0's only text is text 1, ranked after the tied text 0; image 1's text 0 ranks first.
    assert mixed["text_retrieval_recall@1"] == 0.5


def test_ties_broken_by_index_beyond_first_row_block():
    # 300 copies of one image: every text's image ranks exactly at its index.
    image_emb = torch.ones(300, 4)
    owner = torch.arange(300)
    got = retrieval_metrics(image_emb, torch.ones(300, 4), owner, ks=(1, 10, 200, 300), chunk_size=1000)
    assert got["image_retrieval_recall@1"] == pytest.approx(1 / 300)
    assert got["image_retrieval_recall@200"] == pytest.approx(200 / 300)
    assert got["image_retrieval_recall@300"] == 1.0
    assert got["text_retrieval_recall@10"] == pytest.approx(10 / 300)


def test_half_precision_and_int32_index_accepted():
    image_emb, text_emb, owner = random_case(3)
    got = retrieval_metrics(image_emb.half(), text_emb.bfloat16(), owner.int(), ks=(5,))
    assert set(got) == {"image_retrieval_recall@5", "text_retrieval_recall@5"}
    assert all(0.0 <= v <= 1.0 for v in got.values())


def test_large_input_is_chunked(monkeypatch):
    # Every matmul must stay within chunk_size query rows.
    image_emb, text_emb, owner = random_case(4, n_images=50, n_texts=120)
    seen = []
    real_matmul = torch.Tensor.__matmul__

    def spy(a, b):
        seen.append(a.shape[0])
        return real_matmul(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    retrieval_metrics(image_emb, text_emb, owner, ks=(1,), chunk_size=16)
    assert seen and max(seen) <= 16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text_to_image": torch.tensor([0, 3])}, "text_to_image values must be in"),
        ({"text_to_image": torch.tensor([0, -1])}, "text_to_image values must be in"),
        ({"text_to_image": torch.tensor([0])}, "text_to_image must be a 1-D tensor of length 2"),
        ({"text_to_image": torch.tensor([0.0, 1.0])}, "text_to_image must be an integer"),
        ({"text_emb": torch.zeros(2, 4)}, "image_emb has dimension 3 but text_emb has 4"),
        ({"image_emb": torch.zeros(3)}, "image_emb must be a 2-D tensor"),
        ({"image_emb": torch.zeros(0, 3)}, "image_emb is empty"),
        ({"text_emb": torch.tensor([[0.0, float("nan"), 0.0]] * 2)}, "text_emb contains NaN"),
        ({"text_emb": torch.zeros(2, 3, dtype=torch.long)}, "text_emb must be a floating point"),
        ({"ks": ()}, "ks must be"),
        ({"ks": (0,)}, "ks must be"),
        ({"chunk_size": 0}, "chunk_size must be"),
    ],
)
def test_invalid_arguments(kwargs, message):
    args = {"image_emb": torch.zeros(3, 3), "text_emb": torch.zeros(2, 3), "text_to_image": torch.tensor([0, 2])}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(**args)
