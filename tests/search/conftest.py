"""Fixtures for search tests: a loaded tiny checkpoint and small folders of `shapes` images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import coembed


@pytest.fixture(scope="session")
def loaded_tiny(tiny_checkpoint: Path) -> coembed.Loaded:
    return coembed.load(tiny_checkpoint)


@pytest.fixture
def photo_dir(shapes_data: Path, tmp_path: Path) -> Path:
    """Twelve test images, in two sub-folders."""
    root = tmp_path / "photos"
    for i, src in enumerate(sorted((shapes_data / "test" / "images").glob("*.png"))[:12]):
        dst = root / ("holiday" if i < 8 else "work/2024") / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return root
