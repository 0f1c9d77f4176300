"""A full disk (a real, small tmpfs filled to the last byte) and a read-only output folder (a
read-only tmpfs): each entry point gives one clear error naming the path, leaves no partial file,
and keeps what was committed before. Needs root's ``mount``, as CI has here."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import coembed
from coembed.cli.main import main


def _mount(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-fault tests: {done.stderr.strip()}")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB filesystem of its own; :func:`_fill` makes it full."""
    where = tmp_path / "disk"
    _mount(where, "size=8m")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "ro"
    _mount(where, "ro,size=1m")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    return code, lines[-1] if lines else ""


def _junk(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_full_disk_at_a_checkpoint_keeps_the_previous_one(disk: Path, shapes_data: Path, tiny_settings: dict,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up right after the step-4 checkpoint: the run stops with ENOSPC naming the file it
    was writing (the metrics log or the next checkpoint), and the step-4 checkpoint stays whole and
    resumable, with no staging folder left behind."""
    from coembed.train import loop
    from coembed.train.config import TrainConfig

    real_save = loop.save_run_checkpoint

    def save_then_fill(out, *args, **kwargs):
        path = real_save(out, *args, **kwargs)
        _fill(disk)
        return path

    monkeypatch.setattr(loop, "save_run_checkpoint", save_then_fill)
    out = disk / "run"
    cfg = TrainConfig(data=str(shapes_data), out=str(out), **{**tiny_settings, "max_steps": 8, "save_every": 4, "val_every": 100})
    with pytest.raises(OSError, match="No space left on device") as info:
        loop.train(cfg)
    assert str(out) in str(info.value.filename)
    assert _junk(out) == []  # the staging folder and temporary files are gone
    (disk / "filler").unlink()
    assert coembed.load(out / "checkpoint").model is not None  # the step-4 checkpoint is whole
    assert '"step": 4' in (out / "checkpoint" / "train_state.json").read_text()


def test_full_disk_while_embedding_sharding_and_indexing(disk: Path, shapes_data: Path, tiny_checkpoint: Path, capsys) -> None:
    images, db = shapes_data / "test", disk / "idx.db"
    assert _cli(capsys, "index", str(shapes_data / "val"), "--checkpoint", str(tiny_checkpoint), "--db", str(db), "--no-progress")[0] == 0
    _fill(disk)
    for argv, path in [(("embed", "--checkpoint", str(tiny_checkpoint), "--images", str(images), "--out", str(disk / "emb"), "--no-progress"), disk / "emb"),
                       (("data", "shard", str(shapes_data / "test"), str(disk / "shards"), "--samples-per-shard", "16"), disk / "shards"),
                       (("index", str(images), "--checkpoint", str(tiny_checkpoint), "--db", str(db), "--no-progress"), db)]:
        code, err = _cli(capsys, *argv)
        assert code == 2 and str(path) in err and ("No space left" in err or "disk is full" in err or "disk I/O" in err), (argv[0], err)
        assert _junk(disk) == [], argv[0]
    (disk / "filler").unlink()
    code, _ = _cli(capsys, "search", "a red circle", "--db", str(db), "--json")
    assert code == 0  # the index committed before the disk filled is still there and searchable


@pytest.mark.parametrize("command", ["train", "embed", "index", "shard", "convert"])
def test_read_only_output_folder(command: str, read_only: Path, shapes_data: Path, tiny_checkpoint: Path, tiny_sets: list[str], capsys) -> None:
    target = read_only / "out"
    argv = {
        "train": ["train", "--data", str(shapes_data), "--out", str(target), "--preset", "tiny",
                  *[x for s in tiny_sets + ["max_steps=2"] for x in ("--set", s)]],
        "embed": ["embed", "--checkpoint", str(tiny_checkpoint), "--images", str(shapes_data / "test"), "--out", str(target), "--no-progress"],
        "index": ["index", str(shapes_data / "test"), "--checkpoint", str(tiny_checkpoint), "--db", str(target / "idx.db"), "--no-progress"],
        "shard": ["data", "shard", str(shapes_data / "test"), str(target)],
        "convert": ["convert", str(tiny_checkpoint), str(target), "--to", "coembed"],
    }[command]
    code, err = _cli(capsys, *argv)
    assert code == 2 and str(read_only) in err and ("Read-only" in err or "read-only" in err), err
