"""The hostile-image corpus inside datasets: manifest (JSONL, CSV) and folder datasets, DataLoaders with
0 and 2 workers, the image cache, tar shards written and read back, and `coembed train`.

Every bad image must end up as one counted skip with its reason category, whichever stage notices
it (the manifest read, the batch, the shard writer or the shard reader); every good image loads.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from coembed.cli.main import main
from coembed.data.datasets import (ImageFolderDataset, ImageTextDataset, SkipReport, collate_image_text, collate_images,
                                   iter_images, read_samples)
from coembed.data.shards import ShardDataset, write_shards
from coembed.transforms import ImageTransform
from tests.reliability.hostile_images import UNREADABLE, Case, deny_reading, expected_skips, write_corpus

GOOD = 25  # shapes images next to the corpus: 27 + 25 - 4 skipped by the manifest read = 48, three full batches of 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, shapes_data: Path) -> tuple[Path, dict[str, Case]]:
    """A folder with captions.jsonl naming the whole corpus (images/) and GOOD shapes images (good/)."""
    root = tmp_path_factory.mktemp("hostile-ds")
    cases = write_corpus(root / "images")
    lines = [{"image": f"images/{name}", "captions": ["a picture of something"]} for name in cases]
    for src in sorted((shapes_data / "test" / "images").glob("*.png"))[:GOOD]:
        (root / "good").mkdir(exist_ok=True)
        shutil.copy(src, root / "good" / src.name)
        lines.append({"image": f"good/{src.name}", "captions": ["a red circle", "a shape"]})
    # json.dumps escapes the non-UTF-8 name's surrogate as \udce9; json.loads gives the same str back.
    (root / "captions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return root, cases


@pytest.fixture
def denied(monkeypatch) -> None:
    deny_reading(monkeypatch, {UNREADABLE})


def by_file(names_reasons) -> dict[str, str]:
    """``{file name: reason category}`` from ``(relpath or shard/key, reason)`` pairs."""
    return {os.path.basename(name): reason.split(":", 1)[0] for name, reason in names_reasons}


def load_all(ds, collate, workers: int) -> tuple[int, list]:
    loader = DataLoader(ds, batch_size=8, num_workers=workers, collate_fn=collate, shuffle=False)
    loaded, skipped = 0, []
    for batch in loader:
        loaded += 0 if batch.images is None else len(batch.images)
        assert batch.images is None or batch.images.shape[1:] == (3, 32, 32)
        skipped.extend(batch.skipped)
    return loaded, skipped


@pytest.mark.usefixtures("denied")
@pytest.mark.parametrize("workers", [0, 2])
def test_manifest_dataset(dataset, workers: int) -> None:
    root, cases = dataset
    samples, report = read_samples(root)
    ds = ImageTextDataset(root, samples, ImageTransform(32), caption_mode="first")
    loaded, skipped = load_all(ds, collate_image_text, workers)
    got = {**by_file(report.examples), **by_file(skipped)}
    assert got == expected_skips(cases)
    assert report.total + len(skipped) == len(expected_skips(cases))
    assert loaded == GOOD + len(cases) - len(expected_skips(cases))


@pytest.mark.usefixtures("denied")
def test_manifest_dataset_image_cache(dataset) -> None:
    root, cases = dataset
    samples, report = read_samples(root)
    ds = ImageTextDataset(root, samples, ImageTransform(32), caption_mode="first")
    ds.preload()
    loaded, skipped = load_all(ds, collate_image_text, 0)
    assert {**by_file(report.examples), **by_file(skipped)} == expected_skips(cases)
    assert loaded == GOOD + len(cases) - len(expected_skips(cases))


@pytest.mark.usefixtures("denied")
def test_csv_manifest_dataset(dataset, tmp_path: Path) -> None:
    """The same through an OpenCLIP-style CSV (the non-UTF-8 name cannot be written in a UTF-8 CSV)."""
    src, cases = dataset
    root = tmp_path / "csv"
    root.mkdir()
    rows = [json.loads(line) for line in (src / "captions.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if not any(ord(ch) > 127 for ch in r["image"])]
    with (root / "captions.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        writer.writerows([str(src / r["image"]), r["captions"][0]] for r in rows)  # absolute paths
    samples, report = read_samples(root)
    loaded, skipped = load_all(ImageTextDataset(root, samples, ImageTransform(32)), collate_image_text, 0)
    want = {n: r for n, r in expected_skips(cases).items() if n.isascii()}
    assert {**by_file(report.examples), **by_file(skipped)} == want
    assert loaded == GOOD + sum(c.outcome == "ok" and n.isascii() for n, c in cases.items())


@pytest.mark.usefixtures("denied")
@pytest.mark.parametrize("workers", [0, 2])
def test_folder_dataset(dataset, workers: int) -> None:
    """iter_images + ImageFolderDataset (what `coembed embed` reads): the folder named x.jpg is not listed."""
    root, cases = dataset
    relpaths = iter_images(root / "images")
    assert {os.path.basename(p) for p in relpaths} == {n for n, c in cases.items() if c.listed}
    loaded, skipped = load_all(ImageFolderDataset(root / "images", relpaths, ImageTransform(32)), collate_images, workers)
    assert by_file(skipped) == expected_skips(cases, listed_only=True)
    assert loaded == len(relpaths) - len(skipped)


@pytest.mark.usefixtures("denied")
def test_shards_written_and_read_back(dataset, tmp_path: Path) -> None:
    """write_shards skips what it can tell from the header; the reader skips the rest; a rerun reuses."""
    root, cases = dataset
    stats = write_shards(root, tmp_path / "shards", 16)
    written = by_file(stats.skipped.examples)
    assert stats.skipped.total == len(written)
    ds = ShardDataset(sorted(str(p) for p in (tmp_path / "shards").glob("*.tar")), ImageTransform(32), caption_mode="first")
    items = list(ds)
    read_skips = [(item[3], item[4]) for item in items if item[1] is None]
    # A shard member is named by its key: map it back to the image named in the sample's JSON.
    keys = _shard_key_names(tmp_path / "shards")
    read = {keys[os.path.basename(name)]: reason.split(":", 1)[0] for name, reason in read_skips}
    assert {**written, **read} == expected_skips(cases) and not written.keys() & read.keys()
    assert stats.samples == len(items) and len(items) - len(read_skips) == GOOD + len(cases) - len(expected_skips(cases))
    again = write_shards(root, tmp_path / "shards", 16)
    assert again.reused == len(again.shards) and again.skipped.total == stats.skipped.total


def _shard_key_names(folder: Path) -> dict[str, str]:
    import tarfile

    names = {}
    for tar_path in folder.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    names[meta["key"]] = os.path.basename(meta["image"])
    return names


@pytest.mark.usefixtures("denied")
def test_coembed_data_shard_cli(dataset, tmp_path: Path, capsys) -> None:
    root, cases = dataset
    assert main(["data", "shard", str(root), str(tmp_path / "out"), "--samples-per-shard", "64", "--no-progress", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["skipped"] == sum(summary["skipped_by_reason"].values()) > 0
    assert err.startswith(f"skipped {summary['skipped']} samples (")


@pytest.mark.usefixtures("denied")
def test_coembed_train_on_hostile_dataset(dataset, tmp_path: Path, tiny_sets: list[str], capsys) -> None:
    """One epoch (3 full steps of 16 over the 48 samples that pass the manifest read): training finishes and reports every bad image once."""
    root, cases = dataset
    argv = ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--batch-size", "16", "--max-steps", "3",
            "--no-progress", "--json"]
    for item in tiny_sets + ["model.vision.image_size=32", "val_samples=0"]:
        argv += ["--set", item]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    bad = expected_skips(cases)
    assert summary["steps"] == 3 and summary["skipped"] == len(bad)
    assert err.startswith(f"skipped {len(bad)} samples (") and "Traceback" not in err
    counts = Counter(bad.values())
    for category, n in counts.items():
        assert f"{category} {n}" in err
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()
