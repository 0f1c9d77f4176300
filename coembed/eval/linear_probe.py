"""Linear probe: logistic regression on frozen features, C tuned on a validation split."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from coembed.eval.zeroshot import mean_per_class_recall

log = logging.getLogger(__name__)

ArrayLike = Any  # torch.Tensor or numpy array


def linear_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    val_x: ArrayLike,
    val_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    *,
    Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
    max_iter: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Fit a multinomial logistic regression per C, keep the best on val, refit on train+val, test.

    Features are standardised by a StandardScaler fitted on the data the classifier is fitted on
    (train while choosing C, train+val for the final model). Classes that do not occur in the
    training data are never predicted, so their test recall is 0.

    Args:
        train_x: (N_train, D) features (torch tensor or numpy array).
        train_y: (N_train,) integer labels; at least two distinct classes.
        val_x: (N_val, D) features used to choose C.
        val_y: (N_val,) labels.
        test_x: (N_test, D) features.
        test_y: (N_test,) labels.
        Cs: inverse regularisation strengths to try; ties go to the earliest in this order.
        max_iter: L-BFGS iterations per fit.
        seed: random_state of the classifier.

    Returns:
        ``acc1`` and ``mean_per_class_recall`` on test, the chosen ``C`` and its ``val_acc1``.

    Raises:
        ValueError: inconsistent shapes, non-finite features, fewer than two training classes or
            invalid Cs / max_iter (names the argument).
    """
    given = {
        "train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y, "test_x": test_x, "test_y": test_y,
    }
    splits = {name: _to_numpy(name, value) for name, value in given.items()}
    _check_splits(splits)
    _check_options(Cs, max_iter)
    val_accs = [
        _accuracy(_fit(splits["train_x"], splits["train_y"], c, max_iter, seed), splits["val_x"], splits["val_y"])
        for c in Cs
    ]
    best = int(np.argmax(val_accs))  # first maximum: ties go to the earliest C
    model = _fit(
        np.concatenate([splits["train_x"], splits["val_x"]]),
        np.concatenate([splits["train_y"], splits["val_y"]]),
        Cs[best], max_iter, seed,
    )
    pred = model.predict(splits["test_x"])
    return {
        "acc1": float(np.mean(pred == splits["test_y"])),
        "mean_per_class_recall": mean_per_class_recall(torch.from_numpy(pred), torch.from_numpy(splits["test_y"])),
        "C": float(Cs[best]),
        "val_acc1": float(val_accs[best]),
    }


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, seed: int) -> Pipeline:
    """Standardise + L-BFGS logistic regression (multinomial for more than two classes)."""
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter, random_state=seed),
    )
    with warnings.catch_warnings(record=True) as caught:
        # A probe that stops at max_iter is still a valid measurement; log instead of warning.
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.info("linear probe with C=%g did not converge in %d iterations", c, max_iter)
    return model


def _accuracy(model: Pipeline, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows of ``x`` predicted as ``y``."""
    return float(np.mean(model.predict(x) == y))


def _to_numpy(name: str, value: ArrayLike) -> np.ndarray:
    """Features as float64 (N, D), labels as int64 (N,)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if name.endswith("_y"):
        if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
            raise ValueError(f"{name} must be a 1-D integer array, got shape {array.shape} dtype {array.dtype}")
        if array.size and array.min() < 0:
            raise ValueError(f"{name} must hold non-negative class indices, got {int(array.min())}")
        return array.astype(np.int64)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be a 2-D numeric array (N, D), got shape {array.shape} dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array.astype(np.float64)


def _check_splits(splits: dict[str, np.ndarray]) -> None:
    """Non-empty splits, matching row counts and feature dimensions, two or more training classes."""
    dim = splits["train_x"].shape[1]
    for split in ("train", "val", "test"):
        x, y = splits[f"{split}_x"], splits[f"{split}_y"]
        if x.shape[0] == 0 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{split}_x has {x.shape[0]} rows and {split}_y {y.shape[0]}; need equal and > 0")
        if x.shape[1] != dim:
            raise ValueError(f"{split}_x has {x.shape[1]} features but train_x has {dim}")
    if len(np.unique(splits["train_y"])) < 2:
        raise ValueError(f"train_y must contain at least two classes, got {np.unique(splits['train_y']).tolist()}")


def _check_options(Cs: Sequence[float], max_iter: int) -> None:
    """Cs: non-empty positive numbers; max_iter: positive int."""
    if len(Cs) == 0 or any(isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0 for c in Cs):
        raise ValueError(f"Cs must be a non-empty sequence of positive numbers, got {Cs!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
