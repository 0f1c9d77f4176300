"""``coembed embed --shard i --num-shards n``: workers share the partitions of one plan, resume from
completion markers, and refuse outputs of another run (in-process, so each run costs a model load)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import coembed.embeddings.worker as worker
from coembed.cli.embed import shard_arguments
from coembed.cli.main import main
from coembed.errors import ConfigError
from tests.helpers import copy_test_images

SHARD_SIZE = 3  # ten images -> partitions of 3, 3, 3, 1


@pytest.fixture
def images(shapes_data: Path, tmp_path: Path) -> Path:
    return copy_test_images(shapes_data, tmp_path / "images", 10, lambda i: "a" if i < 6 else "b/c")


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def embed(capsys, checkpoint: Path, images: Path, out: Path, *extra) -> dict:
    code = main(["embed", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                 "--shard-size", str(SHARD_SIZE), "--json", "--no-progress", *map(str, extra)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def embed_error(capsys, checkpoint: Path, images: Path, out: Path, *extra) -> str:
    code = main(["embed", "--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out),
                 "--shard-size", str(SHARD_SIZE), "--no-progress", *map(str, extra)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("coembed embed: error: ") and "Traceback" not in err
    return err


def read_partition(out: Path, p: int) -> tuple[np.ndarray, list[dict]]:
    rows = [json.loads(line) for line in (out / "metadata" / f"metadata_{p}.jsonl").read_text().splitlines()]
    return np.load(out / "img_emb" / f"img_emb_{p}.npy"), rows


def partitions(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "img_emb").glob("*.npy"))


def test_two_workers_make_what_one_worker_makes(capsys, tiny_checkpoint: Path, images: Path, tmp_path: Path) -> None:
    single = embed(capsys, tiny_checkpoint, images, tmp_path / "one")
    first = embed(capsys, tiny_checkpoint, images, tmp_path / "two", "--shard", 0, "--num-shards", 2)
    assert partitions(tmp_path / "two") == ["img_emb_0.npy", "img_emb_2.npy"]
    second = embed(capsys, tiny_checkpoint, images, tmp_path / "two", "--shard", 1, "--num-shards", 2)
    assert (single["partitions_done_now"], single["embedded_now"]) == (4, 10)
    assert [(s["partitions_done_now"], s["partitions_other_workers"], s["embedded_now"]) for s in (first, second)] == [(2, 2, 6), (2, 2, 4)]
    assert partitions(tmp_path / "two") == partitions(tmp_path / "one") == [f"img_emb_{p}.npy" for p in range(4)]
    for p in range(4):
        (emb1, rows1), (emb2, rows2) = read_partition(tmp_path / "one", p), read_partition(tmp_path / "two", p)
        assert [r["image_path"] for r in rows1] == [r["image_path"] for r in rows2] and len(rows1) == len(emb1)
        np.testing.assert_allclose(emb1, emb2, atol=1e-6)
        marker = json.loads((tmp_path / "two" / "done" / f"part_{p:05d}.json").read_text())
        assert (marker["partition"], marker["rows"], marker["shard"], marker["num_shards"]) == (p, len(rows2), p % 2, 2)
    assert (tmp_path / "one" / "_plan.json").read_text() == (tmp_path / "two" / "_plan.json").read_text()


def test_torchrun_environment_picks_the_shard(capsys, monkeypatch, tiny_checkpoint: Path, images: Path, tmp_path: Path) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    summary = embed(capsys, tiny_checkpoint, images, tmp_path / "out")
    assert (summary["shard"], summary["num_shards"]) == (1, 2)
    assert partitions(tmp_path / "out") == ["img_emb_1.npy", "img_emb_3.npy"]
    # An explicit argument wins over the environment.
    assert embed(capsys, tiny_checkpoint, images, tmp_path / "out", "--shard", 0)["partitions_done_now"] == 2
    assert partitions(tmp_path / "out") == [f"img_emb_{p}.npy" for p in range(4)]


def test_rerun_redoes_only_unfinished_partitions(capsys, monkeypatch, tiny_checkpoint: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    embed(capsys, tiny_checkpoint, images, out)
    before = {p: read_partition(out, p) for p in range(4)}
    kept_mtime = (out / "img_emb" / "img_emb_0.npy").stat().st_mtime_ns
    (out / "done" / "part_00001.json").unlink()  # killed after the .npy and metadata, before the marker
    npy = out / "img_emb" / "img_emb_2.npy"
    npy.write_bytes(npy.read_bytes()[:-8])  # a damaged file under a valid marker
    calls: list[list[str]] = []

    def counting(model, root, relpaths, *args, **kwargs):
        calls.append(list(relpaths))
        return real(model, root, relpaths, *args, **kwargs)

    real = worker.embed_images
    monkeypatch.setattr(worker, "embed_images", counting)
    summary = embed(capsys, tiny_checkpoint, images, out)
    assert [c[0] for c in calls] == [before[1][1][0]["image_path"], before[2][1][0]["image_path"]]
    assert (summary["partitions_done_now"], summary["partitions_already_done"], summary["embedded_now"]) == (2, 2, 6)
    assert (out / "img_emb" / "img_emb_0.npy").stat().st_mtime_ns == kept_mtime
    for p in range(4):
        np.testing.assert_allclose(read_partition(out, p)[0], before[p][0], atol=1e-6)
    calls.clear()
    assert embed(capsys, tiny_checkpoint, images, out)["partitions_already_done"] == 4 and calls == []


def test_other_shard_size_or_images_refused(capsys, tiny_checkpoint: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    embed(capsys, tiny_checkpoint, images, out, "--shard", 0, "--num-shards", 2)
    plan = (out / "_plan.json").read_text()
    err = embed_error(capsys, tiny_checkpoint, images, out, "--shard", 1, "--num-shards", 2, "--shard-size", 4)
    assert "_plan.json" in err and "--shard-size 3 there, 4 now" in err and "another --out" in err
    (images / "a" / "extra.png").write_bytes(next((images / "b" / "c").glob("*.png")).read_bytes())
    err = embed_error(capsys, tiny_checkpoint, images, out, "--shard", 1, "--num-shards", 2)
    assert "number of images 10 there, 11 now" in err and "image list" in err
    assert (out / "_plan.json").read_text() == plan  # compared, never overwritten
    assert partitions(out) == ["img_emb_0.npy", "img_emb_2.npy"]


@pytest.mark.parametrize(("argv", "env", "needle"), [
    (["--shard", "2", "--num-shards", "2"], {}, "--shard must be in 0..1"),
    (["--shard", "1"], {}, "--shard must be in 0..0 (below --num-shards=1)"),
    ([], {"RANK": "3", "WORLD_SIZE": "2"}, "RANK (from the environment) must be in 0..1"),
    ([], {"WORLD_SIZE": "0"}, "WORLD_SIZE (from the environment) must be at least 1"),
    ([], {"RANK": "one"}, "RANK='one' is not an integer"),
])
def test_invalid_shard_names_the_argument(capsys, monkeypatch, images: Path, tmp_path: Path, argv, env, needle) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    err = embed_error(capsys, tmp_path / "no-checkpoint", images, tmp_path / "out", *argv)
    assert needle in err  # checked before the (here missing) checkpoint is loaded
    assert not (tmp_path / "out").exists()


def test_shard_arguments_defaults() -> None:
    assert shard_arguments(None, None, {}) == (0, 1)
    assert shard_arguments(None, None, {"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    assert shard_arguments(1, 3, {"RANK": "2", "WORLD_SIZE": "4"}) == (1, 3)
    with pytest.raises(ConfigError, match="--shard must be in 0..3"):
        shard_arguments(4, None, {"WORLD_SIZE": "4"})
