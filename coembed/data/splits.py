"""Finding a split inside a dataset folder.

A dataset is either a folder of split folders (``train/``, ``val/``, ``test/``, ``heldout/``, each
with its own manifest, as ``coembed data shapes`` writes them) or a single folder with a manifest.
A single folder answers every split asked for by name (``coembed eval --data folder`` evaluates the
whole folder) but no optional one, so training on it never validates on its own training data.
"""

from __future__ import annotations

import os
from pathlib import Path

from coembed.data.datasets import find_manifest
from coembed.errors import DataError

SPLITS = ("train", "val", "test", "heldout")


def _has_manifest(folder: Path) -> bool:
    return folder.is_dir() and find_manifest(folder) is not None


def split_root(data: str | os.PathLike, split: str, *, required: bool = True) -> Path | None:
    """The folder holding ``split`` of the dataset ``data``.

    Args:
        data: dataset folder.
        split: split name, e.g. ``"train"`` or ``"test"``.
        required: raise if the split is absent; otherwise return None. Optional lookups on a single
            folder return it only for ``"train"``.

    Raises:
        DataError: ``data`` does not exist, or a required split is missing.
    """
    data = Path(data)
    if not data.exists():
        raise DataError(f"dataset folder {data} does not exist")
    if not data.is_dir():
        raise DataError(f"dataset path {data} is not a folder")
    sub = data / split
    if sub.is_dir():
        return sub
    has_splits = any((data / s).is_dir() for s in SPLITS)
    if not has_splits and _has_manifest(data) and (required or split == "train"):
        return data
    if not required:
        return None
    found = [s for s in SPLITS if (data / s).is_dir()]
    hint = f"it has {', '.join(found)}" if found else "it has neither split folders nor a captions.jsonl / CSV manifest"
    raise DataError(f"dataset {data} has no {split!r} split ({hint})")
