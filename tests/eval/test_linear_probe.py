"""linear_probe on synthetic features with known structure, checked against direct sklearn fits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from coembed.eval.linear_probe import linear_probe


def blobs(rng, n_per_class, centres, noise):
    labels = np.repeat(np.arange(len(centres)), n_per_class)
    return centres[labels] + noise * rng.normal(size=(len(labels), centres.shape[1])), labels


def make_splits(seed, n_classes=4, dim=10, spread=6.0, noise=1.0, sizes=(40, 15, 40)):
    rng = np.random.default_rng(seed)
    centres = spread * rng.normal(size=(n_classes, dim))
    return [part for n in sizes for part in blobs(rng, n, centres, noise)]


def reference_val_accuracy(train_x, train_y, val_x, val_y, c):
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(train_x), train_y)
    return float(np.mean(model.predict(scaler.transform(val_x)) == val_y))


def test_separable_blobs_are_learned():
    result = linear_probe(*make_splits(0))
    assert result["acc1"] > 0.95
    assert result["mean_per_class_recall"] > 0.95
    assert result["val_acc1"] > 0.95
    assert set(result) == {"acc1", "mean_per_class_recall", "C", "val_acc1"}


def test_random_labels_give_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(900, 8))
    y = rng.integers(0, 4, size=900)
    result = linear_probe(x[:300], y[:300], x[300:400], y[300:400], x[400:], y[400:])
    assert 0.15 < result["acc1"] < 0.35
    assert 0.15 < result["mean_per_class_recall"] < 0.35


def test_c_is_argmax_of_val_accuracy():
    # Overlapping blobs in many dimensions with few samples: regularisation strength matters.
    train_x, train_y, val_x, val_y, test_x, test_y = make_splits(2, dim=40, spread=0.5, sizes=(12, 60, 30))
    cs = (0.1, 100.0, 0.001, 1.0, 0.01)  # best (0.001 here) neither first nor last
    result = linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, Cs=cs)
    accs = [reference_val_accuracy(train_x, train_y, val_x, val_y, c) for c in cs]
    assert 0 < int(np.argmax(accs)) < len(cs) - 1  # so "first" or "last" would fail
    assert result["C"] == cs[int(np.argmax(accs))]
    assert result["val_acc1"] == pytest.approx(max(accs))
    # Final model: refit on train+val with the chosen C.
    x, y = np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y])
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=result["C"], max_iter=1000).fit(scaler.transform(x), y)
    pred = model.predict(scaler.transform(test_x))
    assert result["acc1"] == pytest.approx(np.mean(pred == test_y))


def test_class_absent_from_train():
    train_x, train_y, val_x, val_y, test_x, test_y = make_splits(3)
    keep_train, keep_val = train_y != 3, val_y != 3
    result = linear_probe(train_x[keep_train], train_y[keep_train], val_x[keep_val], val_y[keep_val], test_x, test_y)
    # Class 3 is never predicted: its recall is 0, the other three are separable.
    assert result["mean_per_class_recall"] == pytest.approx(0.75, abs=0.03)
    assert result["acc1"] == pytest.approx(0.75, abs=0.03)


def test_torch_and_numpy_inputs_agree():
    splits = make_splits(4, spread=1.0)
    as_torch = [torch.from_numpy(a).float() if a.ndim == 2 else torch.from_numpy(a) for a in splits]
    a, b = linear_probe(*splits), linear_probe(*as_torch)
    assert a["C"] == b["C"]
    assert a["acc1"] == pytest.approx(b["acc1"], abs=0.03)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.__setitem__(1, np.zeros_like(s[1])), "train_y must contain at least two classes"),
        (lambda s: s.__setitem__(3, s[3][:-1]), "val_x has 60 rows and val_y 59"),
        (lambda s: s.__setitem__(4, s[4][:, :5]), "test_x has 5 features but train_x has 10"),
        (lambda s: s[0].__setitem__((0, 0), np.nan), "train_x contains NaN"),
        (lambda s: s.__setitem__(5, s[5].astype(float)), "test_y must be a 1-D integer array"),
        (lambda s: s.__setitem__(1, -s[1]), "train_y must hold non-negative"),
    ],
)
def test_invalid_inputs(change, message):
    splits = make_splits(5)
    change(splits)
    with pytest.raises(ValueError, match=message):
        linear_probe(*splits)


@pytest.mark.parametrize(("kwargs", "message"), [({"Cs": ()}, "Cs must be"), ({"Cs": (1.0, 0.0)}, "Cs must be"),
                                                  ({"max_iter": 0}, "max_iter must be")])
def test_invalid_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        linear_probe(*make_splits(6), **kwargs)
