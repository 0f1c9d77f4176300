"""Fixtures for search tests: a loaded tiny checkpoint and small folders of `shapes` images."""

from __future__ import annotations

from pathlib import Path

import pytest

import coembed
from tests.helpers import copy_test_images


@pytest.fixture(scope="session")
def loaded_tiny(tiny_checkpoint: Path) -> coembed.Loaded:
    return coembed.load(tiny_checkpoint)


@pytest.fixture
def photo_dir(shapes_data: Path, tmp_path: Path) -> Path:
    """Twelve test images, in two sub-folders."""
    return copy_test_images(shapes_data, tmp_path / "photos", 12, lambda i: "holiday" if i < 8 else "work/2024")
