"""Fixtures for the HTTP tests: one indexed folder of `shapes` test images per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def served_index(tiny_checkpoint: Path, shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store over 24 `shapes` test images; treat it as read-only."""
    from coembed.search.indexer import IndexerConfig, index_folder

    root = tmp_path_factory.mktemp("served")
    images = root / "images"
    images.mkdir()
    for src in sorted((shapes_data / "test" / "images").glob("*.png"))[:24]:
        shutil.copy(src, images / src.name)
    index_folder(root / "index.db", images, tiny_checkpoint, IndexerConfig(progress=False))
    return root / "index.db"
