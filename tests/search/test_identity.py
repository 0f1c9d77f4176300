"""Which file a store's checkpoint identity hashes, for every checkpoint format, and indexing with
a checkpoint that is not a coembed folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import save_file

import coembed
from coembed.errors import CheckpointError
from coembed.search.indexer import index_folder
from coembed.search.searcher import open_searcher
from coembed.search.store import checkpoint_identity, file_sha256, weights_file


def test_weights_file_of_each_format(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert weights_file(tiny_checkpoint) == tiny_checkpoint / "model.safetensors"
    assert weights_file(tiny_checkpoint.parent) == tiny_checkpoint / "model.safetensors"  # the run folder
    state_dict = tmp_path / "ViT-B-32.safetensors"
    state_dict.write_bytes(b"weights")
    assert weights_file(state_dict) == state_dict
    openclip = tmp_path / "openclip"
    openclip.mkdir()
    (openclip / "open_clip_config.json").write_text("{}")
    (openclip / "open_clip_pytorch_model.bin").write_bytes(b"w")
    assert weights_file(openclip) == openclip / "open_clip_pytorch_model.bin"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(CheckpointError, match="no weights file found.*model.safetensors"):
        weights_file(hf)
    (hf / "model.safetensors").write_bytes(b"w")
    assert weights_file(hf) == hf / "model.safetensors"


def test_identity_of_a_state_dict_file_is_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"abc")
    identity = checkpoint_identity(path, 32)
    assert identity.path == str(path.resolve()) and identity.sha256 == file_sha256(path) and identity.embed_dim == 32


def test_index_and_search_with_an_openclip_state_dict(loaded_tiny, photo_dir: Path, tmp_path: Path) -> None:
    # An OpenCLIP-layout state dict file: coembed's parameter names are OpenCLIP's. Reading it needs
    # the CLIP BPE vocabulary that the open_clip_torch wheel ships (test environment).
    pytest.importorskip("open_clip")
    model = coembed.create_model("vit-b-32", **{"vision.layers": 1, "text.layers": 1, "vision.width": 64, "vision.heads": 2,
                                                "text.width": 64, "text.heads": 2, "embed_dim": 32, "vision.image_size": 64})
    path = tmp_path / "tiny-openclip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    db = tmp_path / "photos.db"
    report = index_folder(db, photo_dir, path, quick_gelu=False)
    assert report.embedded == 12
    searcher = open_searcher(db, quick_gelu=False)  # the recorded checkpoint is the file
    assert len(searcher.text("a red circle", top=3)) == 3
    moved = tmp_path / "moved.safetensors"
    shutil.copy(path, moved)
    assert len(open_searcher(db, moved, quick_gelu=False).text("a star", top=2)) == 2  # same weights, other place
