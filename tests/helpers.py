"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path


def copy_test_images(shapes_data: Path, root: Path, count: int, folder_of: Callable[[int], str]) -> Path:
    """Copy the first ``count`` test-split images of ``shapes_data`` under ``root``, image i into ``folder_of(i)``."""
    for i, src in enumerate(sorted((shapes_data / "test" / "images").glob("*.png"))[:count]):
        dst = root / folder_of(i) / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return root


def png_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width x height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")
