"""Checkpoint folders: resolving, atomic publishing, safetensors / JSON reading, key checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from coembed import checkpoint as ckpt
from coembed.checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    MODEL_FILE,
    TOKENIZER_FILE,
    check_keys,
    publish_folder,
    read_json,
    read_model_files,
    read_tensors,
    resolve,
    save_model_files,
    write_tensors,
)
from coembed.errors import CheckpointError


def _make_checkpoint(folder: Path, marker: str = "new") -> Path:
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, "marker": marker}))
    return folder


# ----------------------------------------------------------------------------- resolve
def test_resolve_checkpoint_folder(tmp_path: Path) -> None:
    folder = _make_checkpoint(tmp_path / "ck")
    assert resolve(folder) == folder
    assert resolve(str(folder)) == folder


def test_resolve_run_folder(tmp_path: Path) -> None:
    folder = _make_checkpoint(tmp_path / "run" / "checkpoint")
    assert resolve(tmp_path / "run") == folder


def test_resolve_prefers_the_new_folder_over_old(tmp_path: Path) -> None:
    _make_checkpoint(tmp_path / "run" / "checkpoint.old", "old")
    folder = _make_checkpoint(tmp_path / "run" / "checkpoint", "new")
    assert resolve(tmp_path / "run") == folder


def test_resolve_falls_back_to_old_in_run_folder(tmp_path: Path) -> None:
    # A crash after "checkpoint -> checkpoint.old" and before "staging -> checkpoint".
    old = _make_checkpoint(tmp_path / "run" / "checkpoint.old", "old")
    assert resolve(tmp_path / "run").resolve() == old.resolve()
    assert resolve(tmp_path / "run" / "checkpoint").resolve() == old.resolve()


def test_resolve_falls_back_to_old_for_direct_folder(tmp_path: Path) -> None:
    old = _make_checkpoint(tmp_path / "model.old", "old")
    assert resolve(tmp_path / "model").resolve() == old.resolve()


def test_resolve_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "." has no name to append ".old" to; this used to raise ValueError.
    folder = _make_checkpoint(tmp_path / "run" / "checkpoint")
    monkeypatch.chdir(tmp_path / "run")
    assert resolve(".").resolve() == folder.resolve()
    monkeypatch.chdir(folder)
    assert resolve(".").resolve() == folder.resolve()
    assert resolve("..").resolve() == folder.resolve()


def test_resolve_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope'} does not exist"):
        resolve(tmp_path / "nope")


def test_resolve_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"not a coembed checkpoint: no config\.json"):
        resolve(tmp_path / "empty")


# ----------------------------------------------------------------------------- publish_folder
def _staging(tmp_path: Path, marker: str) -> Path:
    staging = tmp_path / f".staging-{marker}"
    staging.mkdir()
    (staging / "data.txt").write_text(marker)
    return staging


def test_publish_creates_target(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint"
    publish_folder(_staging(tmp_path, "first"), target)
    assert (target / "data.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_publish_replaces_target_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint"
    publish_folder(_staging(tmp_path, "first"), target)
    (target / "only-in-first.txt").write_text("x")
    publish_folder(_staging(tmp_path, "second"), target)
    assert (target / "data.txt").read_text() == "second"
    assert not (target / "only-in-first.txt").exists()  # replaced as a whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_crash_between_renames_keeps_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    run.mkdir()
    target = run / "checkpoint"
    first = _make_checkpoint(run / ".staging1", "first")
    publish_folder(first, target)

    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        publish_folder(_make_checkpoint(run / ".staging2", "second"), target)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)

    assert not target.exists() and (run / "checkpoint.old").is_dir()
    found = resolve(run)
    assert json.loads((found / CONFIG_FILE).read_text())["marker"] == "first"

    # The next save recovers: new checkpoint in place, the stale .old removed.
    publish_folder(_make_checkpoint(run / ".staging3", "third"), target)
    assert json.loads((resolve(run) / CONFIG_FILE).read_text())["marker"] == "third"
    assert sorted(p.name for p in run.iterdir()) == [".staging2", "checkpoint"]


def test_leftover_old_next_to_new_is_cleaned(tmp_path: Path) -> None:
    # A crash after the swap but before deleting .old: the new one wins and the next publish cleans up.
    _make_checkpoint(tmp_path / "checkpoint.old", "old")
    _make_checkpoint(tmp_path / "checkpoint", "new")
    assert resolve(tmp_path) == tmp_path / "checkpoint"
    publish_folder(_make_checkpoint(tmp_path / ".staging", "newer"), tmp_path / "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


# ----------------------------------------------------------------------------- tensors
def test_write_and_read_tensors(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "a": base,
        "view": base[:2],  # shares storage with "a": safetensors refuses that unless copied
        "t": base.T,  # non-contiguous
        "i": torch.tensor([1, 2, 3]),
        "h": torch.ones(2, dtype=torch.bfloat16),
    }
    path = tmp_path / "x.safetensors"
    write_tensors(path, tensors, metadata={"k": "v"})
    back = read_tensors(path)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"k": "v"}


@pytest.mark.parametrize("data", [b"", b"garbage", b"\xff" * 64, b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}   "])
def test_read_tensors_garbage(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=f"{path} is not a valid safetensors file"):
        read_tensors(path)


def test_read_tensors_truncated(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    write_tensors(path, {"w": torch.randn(64, 64)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=str(path)):
        read_tensors(path)


def test_read_tensors_missing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing .*model.safetensors"):
        read_tensors(tmp_path / "model.safetensors")


# ----------------------------------------------------------------------------- json
def test_read_json(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"a": [1, 2]}')
    assert read_json(path) == {"a": [1, 2]}


@pytest.mark.parametrize(
    "content,match",
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe\x00", "is not valid JSON"),
        (b"[1, 2]", "must hold a JSON object"),
        (b"", "is not valid JSON"),
    ],
)
def test_read_json_invalid_names_file(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        read_json(path)
    assert str(path) in str(info.value)


def test_read_json_missing_or_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing .*config.json"):
        read_json(tmp_path / "config.json")
    (tmp_path / "config.json").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        read_json(tmp_path / "config.json")


# ----------------------------------------------------------------------------- check_keys
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)


def test_check_keys_accepts_matching_state() -> None:
    net = _Net()
    check_keys(net, net.state_dict(), Path("x"))


def test_check_keys_lists_every_problem() -> None:
    net = _Net()
    state = dict(net.state_dict())
    del state["a.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["b.weight"] = torch.zeros(5, 5)
    with pytest.raises(CheckpointError) as info:
        check_keys(net, state, Path("/ck/model.safetensors"))
    msg = str(info.value)
    assert "/ck/model.safetensors" in msg
    assert "missing: a.bias" in msg
    assert "unexpected: extra.weight" in msg
    assert "wrong shape: b.weight (5, 5) != (2, 4)" in msg


def test_check_keys_truncates_long_lists() -> None:
    net = _Net()
    state = {**net.state_dict(), **{f"x{i:02d}": torch.zeros(1) for i in range(15)}}
    with pytest.raises(CheckpointError, match=r"unexpected: x00, .*x09 \.\.\.") as info:
        check_keys(net, state, Path("m"))
    assert "x10" not in str(info.value)


# ----------------------------------------------------------------------------- model files
def test_save_and_read_model_files(tmp_path: Path) -> None:
    net = _Net()
    save_model_files(tmp_path, net, {"model": {"x": 1}}, '{"tok": true}')
    assert (tmp_path / TOKENIZER_FILE).read_text() == '{"tok": true}'
    files = read_model_files(tmp_path)
    assert files.path == tmp_path
    assert files.config == {"format_version": FORMAT_VERSION, "model": {"x": 1}}
    for k, v in net.state_dict().items():
        assert torch.equal(files.state_dict[k], v)
    with safe_open(str(tmp_path / MODEL_FILE), "pt") as f:
        assert f.metadata()["format"] == "coembed"


@pytest.mark.parametrize("version", [2, None, "1"])
def test_format_version_mismatch(tmp_path: Path, version) -> None:
    save_model_files(tmp_path, _Net(), {}, "{}")
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["format_version"] = version
    if version is None:
        del config["format_version"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"config\.json: unsupported format_version {version!r} \(expected 1\)"):
        read_model_files(tmp_path)
