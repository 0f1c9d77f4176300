"""Finding splits in split folders and in single folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from coembed.data.splits import split_root
from coembed.errors import DataError


def _manifest(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "captions.jsonl").write_text("")
    return folder


def test_split_folders(tmp_path: Path) -> None:
    train, test = _manifest(tmp_path / "train"), _manifest(tmp_path / "test")
    assert split_root(tmp_path, "train") == train and split_root(tmp_path, "test") == test
    assert split_root(tmp_path, "val", required=False) is None
    with pytest.raises(DataError, match=r"has no 'val' split \(it has train, test\)"):
        split_root(tmp_path, "val")


def test_single_folder_answers_named_splits_but_no_optional_one(tmp_path: Path) -> None:
    _manifest(tmp_path)
    assert split_root(tmp_path, "train") == tmp_path and split_root(tmp_path, "test") == tmp_path
    assert split_root(tmp_path, "train", required=False) == tmp_path
    assert split_root(tmp_path, "val", required=False) is None  # never validate on the training data


def test_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        split_root(tmp_path / "nope", "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        split_root(tmp_path / "file", "train")
    with pytest.raises(DataError, match="neither split folders nor a captions.jsonl"):
        split_root(tmp_path, "train")
