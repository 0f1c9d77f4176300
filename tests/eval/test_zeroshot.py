"""Zero-shot helpers against naive numpy / python-loop references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from coembed.eval.zeroshot import (
    class_embeddings,
    fill_template,
    mean_per_class_recall,
    zeroshot_classify,
    zeroshot_metrics,
)


class FakeEncoder:
    """Deterministic, unnormalised random vector per distinct string; records every call."""

    def __init__(self, dim=6, seed=0):
        self.rng = np.random.default_rng(seed)
        self.table: dict[str, np.ndarray] = {}
        self.calls: list[list[str]] = []
        self.dim = dim

    def vector(self, text):
        if text not in self.table:
            self.table[text] = self.rng.normal(size=self.dim) * self.rng.uniform(0.1, 10.0)
        return self.table[text]

    def __call__(self, texts):
        self.calls.append(list(texts))
        return torch.tensor(np.stack([self.vector(t) for t in texts]), dtype=torch.float32)


def naive_class_embeddings(encoder, classnames, templates):
    rows = []
    for name in classnames:
        vecs = []
        for template in templates:
            prompt = template.replace("{c}", name) if "{c}" in template else template.replace("{}", name)
            v = encoder.vector(prompt)
            vecs.append(v / np.linalg.norm(v))
        mean = np.mean(vecs, axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


CLASSES = ["circle", "square", "triangle", "star", "hexagon"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {c}", "{} {not a slot}", "itap of a {}"]


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_class_embeddings_match_naive(batch_size):
    encoder = FakeEncoder()
    got = class_embeddings(encoder, CLASSES, TEMPLATES, batch_size=batch_size)
    want = naive_class_embeddings(encoder, CLASSES, TEMPLATES)
    assert got.shape == (5, 6)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert all(len(call) <= batch_size for call in encoder.calls)
    assert sum(len(call) for call in encoder.calls) == len(CLASSES) * len(TEMPLATES)


def test_class_embeddings_differ_from_unnormalised_mean():
    # Guards the "normalise each prompt first" step: vectors have very different norms.
    encoder = FakeEncoder(seed=1)
    got = class_embeddings(encoder, CLASSES, TEMPLATES).numpy()
    raw = np.stack([np.mean([encoder.vector(fill_template(t, c)) for t in TEMPLATES], axis=0) for c in CLASSES])
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    assert not np.allclose(got, raw, atol=1e-3)


def test_fill_template_slots():
    assert fill_template("a {c} or a {}", "cat") == "a cat or a cat"
    assert fill_template("{x} {}", "dog") == "{x} dog"
    assert fill_template("a {c}", "odd{}name") == "a odd{}name"


@pytest.mark.parametrize(
    ("classnames", "templates", "message"),
    [
        (CLASSES, ["a photo of a cat"], "has no class slot"),
        (CLASSES, [], "templates must be a non-empty"),
        ([], TEMPLATES, "classnames must be a non-empty"),
        ("circle", TEMPLATES, "classnames must be a non-empty list"),
        (["circle", 3], TEMPLATES, "classnames must contain only strings"),
    ],
)
def test_class_embeddings_invalid(classnames, templates, message):
    with pytest.raises(ValueError, match=message):
        class_embeddings(FakeEncoder(), classnames, templates)


def test_class_embeddings_bad_encoder_output():
    with pytest.raises(ValueError, match="encode_text must return"):
        class_embeddings(lambda texts: torch.zeros(len(texts) + 1, 4), CLASSES, TEMPLATES)


def naive_metrics(logits, labels):
    logits, labels = logits.tolist(), labels.tolist()
    n_classes = len(logits[0])
    top1 = top5 = 0
    per_class: dict[int, list[bool]] = {}
    for row, y in zip(logits, labels):
        order = sorted(range(n_classes), key=lambda c: (-row[c], c))
        top1 += order[0] == y
        top5 += y in order[: min(5, n_classes)]
        per_class.setdefault(y, []).append(order[0] == y)
    recalls = [sum(v) / len(v) for v in per_class.values()]
    n = len(labels)
    return {"acc1": top1 / n, "acc5": top5 / n, "mean_per_class_recall": sum(recalls) / len(recalls)}


@pytest.mark.parametrize(("n_classes", "seed"), [(3, 0), (7, 1), (12, 2)])
def test_metrics_match_naive(n_classes, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes - 1, (300,), generator=g)  # last class absent from labels
    logits = torch.randn(300, n_classes, generator=g)
    logits[torch.arange(300), labels] += 1.0  # better than chance
    got = zeroshot_metrics(logits, labels)
    want = naive_metrics(logits, labels)
    assert got == pytest.approx(want, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that pred has a class absent from labels
        sk = balanced_accuracy_score(labels.numpy(), logits.argmax(1).numpy())
    assert got["mean_per_class_recall"] == pytest.approx(sk)
    if n_classes < 5:
        assert got["acc5"] == 1.0
    else:
        assert got["acc1"] < got["acc5"] < 1.0


def test_metrics_ties_go_to_lower_class_index():
    logits = torch.zeros(4, 8)
    labels = torch.tensor([0, 1, 4, 5])
    got = zeroshot_metrics(logits, labels)
    assert got["acc1"] == 0.25
    assert got["acc5"] == 0.75  # classes 0..4 are the top 5
    assert got["mean_per_class_recall"] == 0.25  # four classes present, only class 0 recalled


def test_mean_per_class_recall_hand_made():
    pred = torch.tensor([0, 0, 1, 1, 2, 0])
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    # class 0: 2/3, class 1: 1/2, class 2: 0/1
    assert mean_per_class_recall(pred, labels) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)


def test_zeroshot_classify_matches_numpy():
    g = torch.Generator().manual_seed(0)
    image_emb, class_emb = torch.randn(10, 4, generator=g) * 3, torch.randn(5, 4, generator=g)
    got = zeroshot_classify(image_emb, class_emb)
    img = image_emb.numpy() / np.linalg.norm(image_emb.numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(got.numpy(), 100.0 * img @ class_emb.numpy().T, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="must share D"):
        zeroshot_classify(image_emb, torch.randn(5, 3))


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        (torch.zeros(3, 4), torch.tensor([0, 1]), "labels must have shape"),
        (torch.zeros(3, 4), torch.tensor([0, 1, 4]), "labels must be in"),
        (torch.zeros(3, 4), torch.tensor([0, 1, -1]), "labels must be in"),
        (torch.zeros(3, 4), torch.tensor([0.0, 1.0, 2.0]), "labels must be an integer"),
        (torch.full((2, 4), float("nan")), torch.tensor([0, 1]), "without NaN"),
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), "non-empty"),
    ],
)
def test_metrics_invalid(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        zeroshot_metrics(logits, labels)
