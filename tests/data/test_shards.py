"""Tar shards: img2dataset layout, byte-exact round trip, webdataset compatibility both ways, rank x worker
splitting, seeded shuffling and resampling, skips of bad samples and truncated shards, atomic and
resumable writing, and the ``coembed data shard`` command."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, get_worker_info

from coembed.cli.main import main
from coembed.data import shards
from coembed.data.datasets import collate_image_text
from coembed.data.shards import (
    ShardDataset,
    expand_braces,
    read_tar,
    resolve_shards,
    sample_key,
    shard_loader,
    write_shards,
)
from coembed.errors import DataError
from coembed.transforms import ImageTransform, load_image

TRANSFORM = ImageTransform(8)


def _dataset(root: Path, n: int, *, bad: tuple[int, ...] = ()) -> list[dict]:
    """``n`` samples with distinct colours (png, jpg and jpeg), two captions and a meta field; the
    images of ``bad`` are garbage bytes."""
    (root / "img").mkdir(parents=True)
    lines = []
    for i in range(n):
        ext = (".png", ".jpg", ".JPEG")[i % 3]
        path = root / "img" / f"{i:03d}{ext}"
        if i in bad:
            path.write_bytes(b"not an image at all")
        else:
            Image.new("RGB", (10, 6), (20 * i % 256, 7 * i % 256, 90)).save(path, format="PNG" if ext == ".png" else "JPEG")
        lines.append({"image": f"img/{path.name}", "captions": [f"caption {i}", f"other {i}"], "layout": i})
    (root / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


@pytest.fixture
def src(tmp_path: Path) -> Path:
    _dataset(tmp_path / "src", 10)
    return tmp_path / "src"


def _names(items) -> list[str]:
    return [item[3] for item in items]


def _batches(loader) -> list[list[str]]:
    return [[f"{i}:{c}" for i, c in zip(b.indices.tolist(), b.captions)] for b in loader]


# ----------------------------------------------------------------------------- writing
def test_keys_and_shard_names_follow_img2dataset() -> None:
    assert sample_key(0, 3, 10000) == "000000003"
    assert sample_key(12, 9999, 10000) == "000129999"
    assert sample_key(2, 5, 10) == "000025"
    assert sample_key(3, 0, 1) == "00003"
    assert sample_key(1, 7, 11) == "0000107"  # 11 per shard needs two digits


def test_round_trip_keeps_bytes_and_captions(src: Path, tmp_path: Path) -> None:
    lines = {line["image"]: line for line in map(json.loads, (src / "captions.jsonl").read_text().splitlines())}
    stats = write_shards(src, tmp_path / "out", 4)
    assert [s.path for s in stats.shards] == ["00000.tar", "00001.tar", "00002.tar"]
    assert [s.samples for s in stats.shards] == [4, 4, 2] and stats.skipped.total == 0

    seen = {}
    for shard in sorted((tmp_path / "out").glob("*.tar")):
        for sample in read_tar(shard):
            meta = json.loads(sample.members["json"])
            line = lines[meta["image"]]
            ext = "jpg" if line["image"].lower().endswith((".jpg", ".jpeg")) else "png"
            assert sorted(sample.members) == sorted([ext, "json", "txt"])
            assert sample.members[ext] == (src / line["image"]).read_bytes()
            assert sample.members["txt"].decode() == line["captions"][0]
            assert meta == {"key": sample.key, "image": line["image"], "captions": line["captions"], "layout": line["layout"]}
            seen[sample.key] = line["image"]
    assert list(seen) == ["000000", "000001", "000002", "000003", "000010", "000011", "000012", "000013", "000020", "000021"]

    items = list(ShardDataset(tmp_path / "out", TRANSFORM, caption_mode="first"))
    assert len(items) == 10 and all(item[4] is None for item in items)
    for index, image, caption, name, _ in items:
        line = lines[seen[name.split("/")[1]]]
        assert index == int(name.split("/")[1]) and caption == line["captions"][0]
        assert torch.equal(image, TRANSFORM(load_image(src / line["image"])))


def test_output_is_reproducible_byte_for_byte(src: Path, tmp_path: Path) -> None:
    write_shards(src, tmp_path / "a", 4)
    write_shards(src, tmp_path / "b", 4)
    for tar in (tmp_path / "a").glob("*.tar"):
        assert tar.read_bytes() == (tmp_path / "b" / tar.name).read_bytes()
    with tarfile.open(tmp_path / "a" / "00000.tar") as t:
        members = t.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}


def test_splits_get_their_own_folders(tmp_path: Path) -> None:
    _dataset(tmp_path / "src" / "train", 5)
    _dataset(tmp_path / "src" / "val", 3)
    stats = write_shards(tmp_path / "src", tmp_path / "out", 2)
    assert stats.splits == {"train": 5, "val": 3}
    assert [s.path for s in stats.shards] == ["train/00000.tar", "train/00001.tar", "train/00002.tar", "val/00000.tar", "val/00001.tar"]
    top = json.loads((tmp_path / "out" / "_stats.json").read_text())
    assert top["splits"] == {"train": 5, "val": 3} and top["samples"] == 8
    val = json.loads((tmp_path / "out" / "val" / "_stats.json").read_text())
    assert [s["name"] for s in val["shards"]] == ["00000.tar", "00001.tar"] and val["samples"] == 3
    assert len(list(ShardDataset(tmp_path / "out" / "val", TRANSFORM))) == 3
    with pytest.raises(DataError, match="split folders train, val"):
        ShardDataset(tmp_path / "out", TRANSFORM)


def test_unreadable_source_images_are_skipped_and_leave_key_gaps(tmp_path: Path) -> None:
    _dataset(tmp_path / "src", 6, bad=(1, 4))
    stats = write_shards(tmp_path / "src", tmp_path / "out", 3)
    assert stats.samples == 4 and stats.skipped.by_reason == {"not an image": 2}
    assert [s.skipped for s in stats.shards] == [1, 1]
    keys = [s.key for shard in sorted((tmp_path / "out").glob("*.tar")) for s in read_tar(shard)]
    assert keys == ["000000", "000002", "000010", "000012"]
    shard_stats = json.loads((tmp_path / "out" / "00001_stats.json").read_text())
    assert shard_stats["count"] == 3 and shard_stats["successes"] == 2 and shard_stats["skipped"]["by_reason"] == {"not an image": 1}


# ----------------------------------------------------------------------------- atomicity and resumption
def test_rerun_keeps_complete_shards_and_rewrites_damaged_ones(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_shards(src, out, 4)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    again = write_shards(src, out, 4)
    assert again.reused == 3 and again.samples == 10
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == before

    good = (out / "00001.tar").read_bytes()
    (out / "00001.tar").write_bytes(good[: len(good) // 2])
    third = write_shards(src, out, 4)
    assert [s.reused for s in third.shards] == [True, False, True]
    assert (out / "00001.tar").read_bytes() == good

    manifest = (src / "captions.jsonl").read_text()
    (src / "captions.jsonl").write_text(manifest.replace('"caption 9"', '"caption nine"'))
    (out / "00007.tar").write_bytes(good)
    fourth = write_shards(src, out, 4)
    assert [s.reused for s in fourth.shards] == [True, True, False] and fourth.stale == ["00007.tar"]
    assert "1 other .tar files there are not part of it: 00007.tar" in fourth.summary()


def test_interrupted_shard_leaves_no_partial_tar(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = shards._read_image, itertools.count()

    def failing(*args, **kwargs):
        if next(calls) == 6:  # the third sample of the second shard
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "_read_image", failing)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_shards(src, out, 4)
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00000_stats.json"]

    monkeypatch.setattr(shards, "_read_image", real)
    stats = write_shards(src, out, 4)
    assert [s.reused for s in stats.shards] == [True, False, False] and stats.samples == 10


# ----------------------------------------------------------------------------- webdataset compatibility
def test_webdataset_reads_our_shards(src: Path, tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    write_shards(src, tmp_path / "out", 4)
    ours = {s.key: s.members for shard in sorted((tmp_path / "out").glob("*.tar")) for s in read_tar(shard)}
    theirs = list(wds.WebDataset(str(tmp_path / "out" / "{00000..00002}.tar"), shardshuffle=False))
    assert [s["__key__"] for s in theirs] == list(ours)
    for sample in theirs:
        members = ours[sample["__key__"]]
        assert {k: v for k, v in sample.items() if not k.startswith("__")} == members


def test_reader_reads_webdataset_tarwriter_output(tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    png = io.BytesIO()
    Image.new("RGB", (9, 9), (255, 0, 0)).save(png, format="PNG")
    with wds.TarWriter(str(tmp_path / "ext-0.tar")) as sink:
        sink.write({"__key__": "cat_a", "png": png.getvalue(), "txt": "a red cat"})
        sink.write({"__key__": "cat_b", "jpg": png.getvalue(), "json": {"captions": ["  two   spaces ", "x"], "url": "u"}})
    items = list(ShardDataset(tmp_path / "ext-{0..0}.tar", TRANSFORM, caption_mode="first"))
    assert [(item[2], item[3], item[4]) for item in items] == [("a red cat", "ext-0.tar/cat_a", None), ("two spaces", "ext-0.tar/cat_b", None)]
    assert items[0][0] != items[1][0] and items[0][0] == shards.sample_index("cat_a")
    assert torch.equal(items[0][1], TRANSFORM(Image.new("RGB", (9, 9), (255, 0, 0))))


# ----------------------------------------------------------------------------- shard lists
def test_brace_expansion() -> None:
    assert expand_braces("s/{00008..00011}.tar") == ["s/00008.tar", "s/00009.tar", "s/00010.tar", "s/00011.tar"]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("plain{x}.tar") == ["plain{x}.tar"]


def test_resolve_folder_glob_braces_and_missing(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_shards(src, out, 4)
    expected = [out / "00000.tar", out / "00001.tar", out / "00002.tar"]
    assert resolve_shards(out) == expected
    assert resolve_shards(str(out / "*.tar")) == expected
    assert resolve_shards(str(out / "{00000..00002}.tar")) == expected
    assert resolve_shards([out / "00002.tar", out / "00000.tar"]) == [out / "00002.tar", out / "00000.tar"]
    with pytest.raises(DataError, match="00003.tar does not exist"):
        resolve_shards(str(out / "{00000..00003}.tar"))
    with pytest.raises(DataError, match="matches no file"):
        resolve_shards(str(out / "*.tgz"))


# ----------------------------------------------------------------------------- splitting, shuffling, resampling
@pytest.fixture
def five_shards(tmp_path: Path) -> Path:
    _dataset(tmp_path / "five", 10)
    write_shards(tmp_path / "five", tmp_path / "five-out", 2)
    return tmp_path / "five-out"


class _WorkerTagged(ShardDataset):
    """Items with the DataLoader worker that made them appended."""

    def item(self, raw):
        return (*super().item(raw), get_worker_info().id)


def test_ranks_and_workers_partition_the_samples(five_shards: Path) -> None:
    parts: dict[tuple[int, int], list[str]] = {}
    for rank in range(2):
        for item in DataLoader(_WorkerTagged(five_shards, TRANSFORM, rank=rank, world_size=2), batch_size=None, num_workers=2):
            parts.setdefault((rank, item[-1]), []).append(item[3])
    assert sorted(parts) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # every one of the 2 x 2 readers read something
    names = [name for part in parts.values() for name in part]
    assert len(names) == len(set(names)) == 10
    shards_of = {reader: {name.split("/")[0] for name in part} for reader, part in parts.items()}
    assert shards_of[(0, 0)] == {"00000.tar", "00004.tar"} and shards_of[(1, 1)] == {"00003.tar"}


def test_shuffle_is_seeded_and_changes_with_the_epoch(five_shards: Path) -> None:
    def order(epoch: int, seed: int = 1, shuffle: int = 4) -> list[str]:
        dataset = ShardDataset(five_shards, TRANSFORM, seed=seed, shuffle=shuffle)
        dataset.set_epoch(epoch)
        return _names(dataset)

    plain = order(0, shuffle=0)
    assert order(0) == order(0)
    assert order(0) != plain and order(1) != order(0) and order(0, seed=2) != order(0)
    assert sorted(order(0)) == sorted(plain) == sorted(order(1))

    def shard_order(rank: int, epoch: int) -> list[str]:
        dataset = ShardDataset(five_shards, TRANSFORM, seed=1, shuffle=4, rank=rank, world_size=2)
        dataset.set_epoch(epoch)
        return [p.name for p in dataset.epoch_shards()]

    # Shard order too is shuffled per epoch, the same on every rank so that their shares stay disjoint.
    assert shard_order(0, 0) == shard_order(1, 0) != shard_order(0, 1)
    assert shard_order(0, 0) != sorted(shard_order(0, 0)) or shard_order(0, 1) != sorted(shard_order(0, 1))


def test_resampled_draws_shards_with_replacement_deterministically(five_shards: Path) -> None:
    def draws(rank: int = 0, worker: int = 0, epoch: int = 0) -> list[str]:
        dataset = ShardDataset(five_shards, TRANSFORM, seed=3, resampled=True, rank=rank, world_size=2)
        dataset.set_epoch(epoch)
        return [p.name for p in itertools.islice(dataset.reader_shards(worker, 2), 20)]

    first = draws()
    assert first == draws() and set(first) == {f"0000{i}.tar" for i in range(5)}
    # With replacement: not a run of shuffled epochs, some five consecutive draws repeat a shard.
    assert any(len(set(first[i:i + 5])) < 5 for i in range(0, 20, 5))
    assert len({tuple(first), tuple(draws(rank=1)), tuple(draws(worker=1)), tuple(draws(epoch=1))}) == 4
    stream = ShardDataset(five_shards, TRANSFORM, resampled=True)
    assert len(list(itertools.islice(iter(stream), 25))) == 25  # endless: more items than the 10 samples


def test_skip_batches_resumes_where_the_run_stopped(five_shards: Path) -> None:
    for workers in (0, 2):
        loader = lambda skip: shard_loader(five_shards, batch_size=2, preprocess=TRANSFORM, seed=5, shuffle=3,  # noqa: E731
                                           workers=workers, skip_batches=skip)
        full = _batches(loader(0))
        assert len(full) == 5 and _batches(loader(0)) == full
        assert _batches(loader(2)) == full[2:]
        assert _batches(loader(3)) == full[3:]


def test_too_few_shards_for_the_ranks(five_shards: Path) -> None:
    with pytest.raises(DataError, match="5 shards cannot feed 6 ranks"):
        shard_loader(five_shards, batch_size=2, preprocess=TRANSFORM, rank=0, world_size=6)


def test_random_caption_per_key_and_epoch_and_hard_negatives(tmp_path: Path) -> None:
    _dataset(tmp_path / "src", 8)
    lines = [json.loads(x) for x in (tmp_path / "src" / "captions.jsonl").read_text().splitlines()]
    lines[0]["negatives"], lines[0]["negative_types"] = ["wrong colour", "wrong shape"], ["colour", "shape"]
    (tmp_path / "src" / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    write_shards(tmp_path / "src", tmp_path / "out", 4)

    def captions(epoch: int, seed: int = 0) -> list[str]:
        dataset = ShardDataset(tmp_path / "out", TRANSFORM, seed=seed)
        dataset.set_epoch(epoch)
        return [item[2] for item in dataset]

    assert captions(0) == captions(0) and captions(0) != captions(1) and captions(0) != captions(0, seed=1)
    assert {c.split()[0] for c in captions(0)} == {"caption", "other"}

    items = list(ShardDataset(tmp_path / "out", TRANSFORM, with_negatives=True, negative_types=["shape"]))
    assert all(len(item) == 6 for item in items)
    assert [item[5] for item in items] == ["wrong shape"] + [None] * 7
    assert collate_image_text(items).negatives == ["wrong shape"]


# ----------------------------------------------------------------------------- bad samples and shards
def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_corrupt_samples_are_skipped_with_their_reasons(tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    _tar(tmp_path / "bad.tar", [
        ("0.png", png.getvalue()), ("0.txt", b"good one"),
        ("1.png", b"\x89PNG garbage"), ("1.txt", b"garbage image"),
        ("2.png", png.getvalue()), ("2.json", b"{not json"), ("2.txt", b"bad json"),
        ("3.png", png.getvalue()), ("3.json", b'{"url": "x"}'),
        ("4.txt", b"no image"), ("4.json", b'{"captions": ["c"]}'),
    ])
    batch = collate_image_text(list(ShardDataset(tmp_path / "bad.tar", TRANSFORM)))
    assert batch.captions == ["good one"] and batch.indices.tolist() == [0] and batch.images.shape == (1, 3, 8, 8)
    reasons = {name: reason.split(":")[0] for name, reason in batch.skipped}
    assert reasons == {"bad.tar/1": "not an image", "bad.tar/2": "invalid JSON", "bad.tar/3": "empty caption", "bad.tar/4": "no image"}


def test_truncated_shard_is_reported_and_iteration_goes_on(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_shards(src, out, 4)
    whole = (out / "00001.tar").read_bytes()
    (out / "00001.tar").write_bytes(whole[: len(whole) // 2])
    items = list(ShardDataset(out, TRANSFORM))
    good = [item[3] for item in items if item[1] is not None]
    bad = [(item[3], item[4]) for item in items if item[1] is None]
    assert [n for n in good if n.startswith("00000")] == [f"00000.tar/00000{i}" for i in range(4)]
    assert [n for n in good if n.startswith("00002")] == ["00002.tar/000020", "00002.tar/000021"]
    assert 0 < len([n for n in good if n.startswith("00001")]) < 4
    assert len(bad) == 1 and bad[0][0] == "00001.tar" and bad[0][1].startswith("truncated shard: 00001.tar")


def test_tar_cut_between_members_is_reported_too(src: Path, tmp_path: Path) -> None:
    write_shards(src, tmp_path / "out", 4)
    whole = (tmp_path / "out" / "00000.tar").read_bytes()
    with tarfile.open(tmp_path / "out" / "00000.tar") as tar:
        cut = tar.getmembers()[3].offset  # the header of the second sample's first member
    (tmp_path / "cut.tar").write_bytes(whole[:cut])
    items = list(ShardDataset(tmp_path / "cut.tar", TRANSFORM))
    assert [item[3] for item in items] == ["cut.tar/000000", "cut.tar"]
    assert "no end-of-archive marker" in items[1][4]


# ----------------------------------------------------------------------------- command line
def test_cli_shard_json_and_skip_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _dataset(tmp_path / "src", 5, bad=(2,))
    assert main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "out"), "--samples-per-shard", "2", "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["samples"] == 4 and summary["shards"] == 3 and summary["skipped_by_reason"] == {"not an image": 1}
    assert "skipped 1 sample (not an image 1): img/002.JPEG" in captured.err

    assert main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "out"), "--samples-per-shard", "2", "--no-progress"]) == 0
    assert "wrote 3 shards (0 new, 3 complete from before) with 4 samples" in capsys.readouterr().err


def test_cli_shard_errors_name_the_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "shard", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert f"coembed data: error: dataset folder {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    _dataset(tmp_path / "src", 2)
    (tmp_path / "file").write_text("x")
    assert main(["data", "shard", str(tmp_path / "src"), str(tmp_path / "file")]) == 2
    assert f"output folder {tmp_path / 'file'} is a file" in capsys.readouterr().err
