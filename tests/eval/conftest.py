"""Fixtures of the generated-image evaluation tests: 32 px shapes data and a reader trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shapes32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 px `shapes` dataset (train 1500, test 200; ~3 s to render); treat it as read-only."""
    from coembed.data.synthetic.shapes import ShapesConfig, generate

    root = tmp_path_factory.mktemp("data32") / "shapes32"
    generate(ShapesConfig(image_size=32, train=1500, val=0, test=200, heldout=0, workers=1), root)
    return root


@pytest.fixture(scope="session")
def trained_reader(shapes32: Path):
    """An attribute reader trained 300 steps on ``shapes32``'s real train images (~20 s on one thread)."""
    import torch

    from coembed.eval.attribute_reader import ReaderConfig, ReaderTraining, load_split, train_reader

    torch.set_num_threads(1)
    images, targets = load_split(shapes32 / "train")
    return train_reader(images, targets, ReaderConfig(image_size=32), ReaderTraining(steps=300, batch_size=32, lr=3e-3))
