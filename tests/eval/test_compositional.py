"""hard_negative_accuracy against a naive python loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coembed.eval.compositional import hard_negative_accuracy

TYPES = ["swap_attributes", "swap_relation", "change_count"]


def naive(image_emb, pos_emb, neg_emb, neg_owner, neg_type):
    img, pos, neg = image_emb.double().numpy(), pos_emb.double().numpy(), neg_emb.double().numpy()
    owner = neg_owner.tolist()
    wins = [float(img[o] @ pos[o]) > float(img[o] @ neg[k]) for k, o in enumerate(owner)]
    per_image: dict[int, list[bool]] = {}
    per_type: dict[str, list[bool]] = {}
    for k, o in enumerate(owner):
        per_image.setdefault(o, []).append(wins[k])
        per_type.setdefault(neg_type[k], []).append(wins[k])
    return {
        "pair_accuracy": sum(wins) / len(wins),
        "image_accuracy": sum(all(v) for v in per_image.values()) / len(per_image),
        "by_type": {t: sum(v) / len(v) for t, v in per_type.items()},
        "n_images": len(per_image),
        "n_negatives": len(wins),
    }


def random_case(seed, n=30, k=80, dim=8):
    g = torch.Generator().manual_seed(seed)
    image_emb = torch.randn(n, dim, generator=g, dtype=torch.float64)
    pos_emb = image_emb + 1.5 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    neg_owner = torch.randint(0, n - 2, (k,), generator=g)  # the last two images get no negatives
    neg_emb = image_emb[neg_owner] + 1.5 * torch.randn(k, dim, generator=g, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    neg_type = [TYPES[i] for i in rng.integers(0, 3, size=k)]
    return image_emb, pos_emb, neg_emb, neg_owner, neg_type


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [1, 13, 65536])
def test_matches_naive_loop(seed, chunk_size):
    args = random_case(seed)
    got = hard_negative_accuracy(*args, chunk_size=chunk_size)
    want = naive(*args)
    assert got["by_type"] == pytest.approx(want.pop("by_type"))
    assert list(got.pop("by_type")) == sorted(TYPES)
    assert got == want
    assert 0 < got["image_accuracy"] < got["pair_accuracy"] < 1
    assert got["n_images"] <= 28


def test_hand_made_case_with_tie():
    image_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    pos_emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    neg_emb = torch.tensor([
        [0.0, 1.0],  # image 0: 1 > 0, won
        [0.5, 0.0],  # image 0: 1 > 0.5, won
        [1.0, 0.0],  # image 1: 1 > 0, won
        [0.0, 2.0],  # image 1: 1 < 2, lost
        [1.0, 0.0],  # image 0: identical to the positive -> tie -> lost
    ])
    owner = torch.tensor([0, 0, 1, 1, 0])
    kinds = ["a", "b", "a", "b", "c"]
    got = hard_negative_accuracy(image_emb, pos_emb, neg_emb, owner, kinds)
    assert got == {
        "pair_accuracy": pytest.approx(3 / 5),
        "image_accuracy": 0.0,  # image 0 loses the tie, image 1 loses one; image 2 has no negatives
        "by_type": {"a": 1.0, "b": 0.5, "c": 0.0},
        "n_images": 2,
        "n_negatives": 5,
    }


def test_exact_duplicate_negatives_are_ties_in_float32():
    g = torch.Generator().manual_seed(7)
    image_emb = torch.nn.functional.normalize(torch.randn(50, 64, generator=g), dim=1)
    pos_emb = torch.nn.functional.normalize(torch.randn(50, 64, generator=g), dim=1)
    got = hard_negative_accuracy(image_emb, pos_emb, pos_emb.clone(), torch.arange(50), ["dup"] * 50)
    assert got["pair_accuracy"] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pos_emb": torch.zeros(2, 3)}, "pos_emb must have image_emb's shape"),
        ({"neg_emb": torch.zeros(2, 4)}, "neg_emb has dimension 4"),
        (
            {"neg_emb": torch.zeros(0, 3), "neg_owner": torch.zeros(0, dtype=torch.long), "neg_type": []},
            "neg_emb is empty",
        ),
        ({"neg_owner": torch.tensor([0, 3])}, "neg_owner values must be in"),
        ({"neg_owner": torch.tensor([0])}, "neg_owner must be a 1-D tensor of length 2"),
        ({"neg_type": ["a"]}, "neg_type must be a list of 2 strings"),
        ({"neg_type": ["a", 1]}, "neg_type must contain only strings"),
        ({"image_emb": torch.full((3, 3), float("inf"))}, "image_emb contains NaN or infinite"),
        ({"chunk_size": 0}, "chunk_size must be"),
    ],
)
def test_invalid_arguments(kwargs, message):
    args = {
        "image_emb": torch.ones(3, 3),
        "pos_emb": torch.ones(3, 3),
        "neg_emb": torch.zeros(2, 3),
        "neg_owner": torch.tensor([0, 2]),
        "neg_type": ["a", "b"],
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        hard_negative_accuracy(**args)


def test_winoground_scores_match_a_naive_loop() -> None:
    from coembed.eval.compositional import winoground_scores

    torch.manual_seed(0)
    s = torch.randn(40, 2, 2)
    s[0] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # all three won
    s[1] = torch.tensor([[1.0, 2.0], [0.0, 3.0]])  # text won, image lost (C0 prefers I1)
    types = ["a" if i % 3 else "b" for i in range(40)]
    got = winoground_scores(s, types)
    text = [s[p, 0, 0] > s[p, 1, 0] and s[p, 1, 1] > s[p, 0, 1] for p in range(40)]
    image = [s[p, 0, 0] > s[p, 0, 1] and s[p, 1, 1] > s[p, 1, 0] for p in range(40)]
    assert text[1] and not image[1]
    assert got["text"] == pytest.approx(sum(text) / 40) and got["image"] == pytest.approx(sum(image) / 40)
    assert got["group"] == pytest.approx(sum(a and b for a, b in zip(text, image)) / 40) and got["n"] == 40
    b_rows = [p for p in range(40) if types[p] == "b"]
    assert got["by_type"]["b"]["text"] == pytest.approx(sum(text[p] for p in b_rows) / len(b_rows))
    with pytest.raises(ValueError, match="scores"):
        winoground_scores(torch.zeros(3, 2), ["a"] * 3)


def test_accuracy_from_scores_equals_the_embedding_version() -> None:
    from coembed.eval.compositional import hard_negative_accuracy, hard_negative_accuracy_from_scores

    torch.manual_seed(0)
    img, pos, neg = torch.randn(5, 4), torch.randn(5, 4), torch.randn(9, 4)
    owner = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4, 4])
    types = ["x", "y"] * 4 + ["x"]
    want = hard_negative_accuracy(img, pos, neg, owner, types)
    got = hard_negative_accuracy_from_scores((img * pos).sum(-1), (img[owner] * neg).sum(-1), owner, types)
    assert got == want
