"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path


def copy_test_images(shapes_data: Path, root: Path, count: int, folder_of: Callable[[int], str]) -> Path:
    """Copy the first ``count`` test-split images of ``shapes_data`` under ``root``, image i into ``folder_of(i)``."""
    for i, src in enumerate(sorted((shapes_data / "test" / "images").glob("*.png"))[:count]):
        dst = root / folder_of(i) / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return root
