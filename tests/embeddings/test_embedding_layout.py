"""``coembed.embeddings.layout``: the shared plan (created once, compared by every other worker) and
what makes a partition finished."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from coembed.embeddings import layout
from coembed.errors import ConfigError, DataError
from coembed.search.store import ModelIdentity

MODEL = ModelIdentity("/ckpt", "ab" * 32, 32)
PATHS = [f"{folder}/{i:03d}.png" for folder in ("a", "b") for i in range(5)]


def plan(root: Path, paths=PATHS, shard_size: int = 4, model: ModelIdentity = MODEL) -> layout.Plan:
    return layout.make_plan(root, paths, shard_size, model)


def test_plan_partitions(tmp_path: Path) -> None:
    p = plan(tmp_path)
    assert [(x.index, x.first, x.last, x.count) for x in p.partitions] == [
        (0, "a/000.png", "a/003.png", 4), (1, "a/004.png", "b/002.png", 4), (2, "b/003.png", "b/004.png", 2)]
    assert p.partitions[1].sha256 == layout.paths_digest(PATHS[4:8]) != p.partitions[0].sha256
    assert layout.Plan.from_dict(json.loads(json.dumps(p.to_dict())), tmp_path) == p


def test_second_worker_compares_and_keeps_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = layout.ensure_plan(tmp_path, plan(tmp_path))
    text = (tmp_path / layout.PLAN_FILE).read_text()
    # Another node: the images are mounted elsewhere and the checkpoint was copied; same work.
    other_node = replace(plan(tmp_path / "mnt"), model_path="/copy/ckpt")
    assert layout.ensure_plan(tmp_path, other_node) == first
    # A worker that saw no plan yet but lost the race to create it compares instead of overwriting.
    monkeypatch.setattr(Path, "exists", lambda self: False)
    with pytest.raises(ConfigError, match="--shard-size 4 there, 3 now"):
        layout.ensure_plan(tmp_path, plan(tmp_path, shard_size=3))
    assert (tmp_path / layout.PLAN_FILE).read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == [layout.PLAN_FILE]  # no temporary file left


@pytest.mark.parametrize(("change", "needle"), [
    ({"paths": PATHS[:-1]}, "number of images 10 there, 9 now"),
    ({"paths": [p.replace("b/", "c/") for p in PATHS]}, "image list"),
    ({"model": ModelIdentity("/ckpt", "cd" * 32, 32)}, "checkpoint weights"),
])
def test_other_work_refused(tmp_path: Path, change: dict, needle: str) -> None:
    layout.ensure_plan(tmp_path, plan(tmp_path))
    with pytest.raises(ConfigError, match="describes other work") as info:
        layout.ensure_plan(tmp_path, plan(tmp_path, **change))
    assert needle in str(info.value) and str(tmp_path / layout.PLAN_FILE) in str(info.value)


def test_read_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no _plan.json"):
        layout.read_plan(tmp_path)
    (tmp_path / layout.PLAN_FILE).write_text('{"partitions": []}')
    with pytest.raises(DataError, match="is not a coembed embedding plan"):
        layout.read_plan(tmp_path)


def _finished_partition(out: Path, p: layout.Plan) -> layout.Marker:
    npy, meta = b"npy bytes", b'{"image_path": "a/000.png"}\n'
    layout.npy_path(out, 0).parent.mkdir(parents=True)
    layout.metadata_path(out, 0).parent.mkdir(parents=True)
    layout.npy_path(out, 0).write_bytes(npy)
    layout.metadata_path(out, 0).write_bytes(meta)
    marker = layout.Marker(partition=0, rows=1, skipped=0, npy_sha256=layout.digest(npy), metadata_sha256=layout.digest(meta),
                           paths_sha256=p.partitions[0].sha256, model_path=MODEL.path, model_sha256=MODEL.sha256,
                           shard=0, num_shards=1, seconds=0.1)
    layout.write_marker(out, marker)
    return marker


@pytest.mark.parametrize("damage", ["none", "npy", "metadata", "marker", "model", "no marker"])
def test_finished_only_when_marker_and_files_agree(tmp_path: Path, damage: str) -> None:
    p = plan(tmp_path)
    marker = _finished_partition(tmp_path, p)
    if damage == "npy":
        layout.npy_path(tmp_path, 0).write_bytes(b"npy byte")
    elif damage == "metadata":
        layout.metadata_path(tmp_path, 0).write_text("")
    elif damage == "marker":
        layout.marker_path(tmp_path, 0).write_text("{truncated")
    elif damage == "model":
        layout.write_marker(tmp_path, replace(marker, model_sha256="cd" * 32))
    elif damage == "no marker":
        layout.marker_path(tmp_path, 0).unlink()
    found = layout.finished_marker(tmp_path, p, 0)
    assert found == (marker if damage == "none" else None)
