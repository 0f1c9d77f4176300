"""Manifest readers, skip accounting and the torch datasets, on hand-made folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from coembed.data.datasets import (
    ImageFolderDataset,
    ImageTextDataset,
    Sample,
    SkipReport,
    collate_image_text,
    collate_images,
    iter_images,
    read_samples,
    skip_category,
)
from coembed.errors import DataError
from coembed.transforms import ImageTransform

TRANSFORM = ImageTransform(16)


def _image(path: Path, color: tuple[int, int, int] = (200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), color).save(path)


def _write_lines(path: Path, lines: list) -> None:
    with path.open("wb") as f:
        for line in lines:
            raw = line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode()
            f.write(raw + b"\n")


# ----------------------------------------------------------------------------- SkipReport
def test_skip_report_counts_by_category_and_summarises() -> None:
    report = SkipReport(max_examples=2)
    report.add("a.png", "missing file: gone")
    report.add("b.png", "missing file: gone")
    report.add("c.png", "not an image: text")
    assert report.total == 3 and report.by_reason == {"missing file": 2, "not an image": 1}
    assert report.examples == [("a.png", "missing file: gone"), ("b.png", "missing file: gone")]
    text = report.summary(max_examples=2)
    assert text.startswith("skipped 3 samples (missing file 2, not an image 1): a.png (missing file: gone)")
    assert text.endswith("and 1 more")
    other = SkipReport()
    other.add("d.png", "empty caption")
    report.merge(other)
    assert report.total == 4 and report.by_reason["empty caption"] == 1 and len(report.examples) == 2
    assert SkipReport().summary() == "skipped 0 samples"
    one = SkipReport()
    one.add("x", "file not found")
    assert one.summary() == "skipped 1 sample (file not found 1): x (file not found)"
    assert skip_category("truncated or corrupt: OSError: x: y") == "truncated or corrupt"


# ----------------------------------------------------------------------------- captions.jsonl
def test_jsonl_good_and_bad_lines(tmp_path: Path) -> None:
    for name in ("a.png", "sub/b.png", "c.png", "d.png"):
        _image(tmp_path / name)
    _write_lines(tmp_path / "captions.jsonl", [
        {"image": "a.png", "captions": ["a red  square ", "a red square", "x\x00y"], "objects": [1]},
        {"image": "sub/b.png", "caption": "one caption"},
        "",  # blank lines are ignored, not counted
        "{not json",
        b'{"image": "c.png", "caption": "caf\xe9"}',  # Latin-1 byte: invalid UTF-8
        [1, 2],
        {"captions": ["no image"]},
        {"image": 5, "captions": ["x"]},
        {"image": "c.png"},
        {"image": "c.png", "captions": [1, 2]},
        {"image": "d.png", "captions": ["  ", ""]},
        {"image": "gone.png", "captions": ["x"]},
        {"image": "a.png", "captions": ["a duplicate line adds captions"]},
        {"image": "sub", "captions": ["a folder is not an image file"]},
    ])
    (tmp_path / "sub").mkdir(exist_ok=True)
    samples, report = read_samples(tmp_path)
    assert [s.image for s in samples] == ["a.png", "sub/b.png"]
    assert samples[0].captions == ("a red square", "x y", "a duplicate line adds captions")  # cleaned, deduplicated
    assert samples[0].meta == {"objects": [1]} and samples[1].captions == ("one caption",)
    assert report.by_reason == {"invalid JSON": 1, "invalid UTF-8": 1, "wrong type": 3, "missing field": 2,
                                "empty caption": 1, "missing file": 1, "not an image": 1}  # the folder "sub"
    names = [name for name, _ in report.examples]
    assert "captions.jsonl:4" in names and "gone.png" in names and "d.png" in names


def test_no_usable_sample_is_an_error(tmp_path: Path) -> None:
    _write_lines(tmp_path / "captions.jsonl", [{"image": "gone.png", "captions": ["x"]}, {"image": "a.png", "caption": " "}])
    with pytest.raises(DataError, match=r"no usable samples in .*captions.jsonl.*missing file 1.*empty caption 1"):
        read_samples(tmp_path)


def test_missing_folder_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_samples(tmp_path / "nope")
    with pytest.raises(DataError, match="no captions.jsonl and no CSV"):
        read_samples(tmp_path)


# ----------------------------------------------------------------------------- CSV
@pytest.mark.parametrize("sep", [",", "\t"])
def test_openclip_csv(tmp_path: Path, sep: str) -> None:
    _image(tmp_path / "img" / "a.png")
    _image(tmp_path / "img" / "b.png")
    rows = [["filepath", "title"], ["img/a.png", "a red, square"], ["img/b.png", "blue"], ["img/a.png", "second"],
            ["", "no path"], ["img/c.png", "missing"]]
    quote = lambda v: f'"{v}"' if sep in v else v  # noqa: E731
    (tmp_path / "train.csv").write_text("\n".join(sep.join(quote(v) for v in r) for r in rows) + "\n")
    samples, report = read_samples(tmp_path)
    assert [(s.image, s.captions) for s in samples] == [("img/a.png", ("a red, square", "second")), ("img/b.png", ("blue",))]
    assert report.by_reason == {"missing field": 1, "missing file": 1}


def test_csv_absolute_paths_and_bad_header(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.csv").write_text(f"filepath,title\n{tmp_path / 'a.png'},hello\n")
    samples, _ = read_samples(tmp_path / "d")
    assert samples[0].image == str(tmp_path / "a.png")
    (tmp_path / "d" / "x.csv").write_text("path,caption\na.png,x\n")
    with pytest.raises(DataError, match="missing column.*filepath, title"):
        read_samples(tmp_path / "d")
    (tmp_path / "d" / "y.csv").write_text("filepath,title\n")
    with pytest.raises(DataError, match="several CSV files"):
        read_samples(tmp_path / "d")


# ----------------------------------------------------------------------------- datasets
@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, list[Sample]]:
    for i in range(6):
        _image(tmp_path / f"{i}.png", (40 * i, 0, 0))
    (tmp_path / "3.png").write_bytes(b"not an image")
    samples = [Sample(f"{i}.png", tuple(f"caption {i}.{k}" for k in range(4))) for i in range(6)]
    return tmp_path, samples


def test_caption_choice_depends_only_on_seed_epoch_index(folder) -> None:
    root, samples = folder
    ds = ImageTextDataset(root, samples, TRANSFORM, seed=7)
    first = [ds.caption(i) for i in range(6)]
    assert [ds.caption(i) for i in reversed(range(6))] == first[::-1]  # order of access does not matter
    assert ImageTextDataset(root, samples, TRANSFORM, seed=7).caption(2) == first[2]
    epochs = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        epochs.append(tuple(ds.caption(i) for i in range(6)))
    assert len(set(epochs)) > 1 and all(c in samples[i].captions for e in epochs for i, c in enumerate(e))
    assert [ImageTextDataset(root, samples, TRANSFORM, caption_mode="first").caption(i) for i in range(6)] == \
        [s.captions[0] for s in samples]
    with pytest.raises(ValueError, match="caption_mode"):
        ImageTextDataset(root, samples, TRANSFORM, caption_mode="all")


def test_collate_drops_bad_images_and_names_them(folder) -> None:
    root, samples = folder
    ds = ImageTextDataset(root, samples, TRANSFORM)
    batch = collate_image_text([ds[i] for i in range(6)])
    assert batch.images.shape == (5, 3, 16, 16) and batch.indices.tolist() == [0, 1, 2, 4, 5]
    assert batch.captions == [ds.caption(i) for i in (0, 1, 2, 4, 5)]
    assert [s.name for s in batch.skipped] == ["3.png"] and skip_category(batch.skipped[0].reason) == "not an image"
    torch.testing.assert_close(batch.images[4], TRANSFORM(Image.open(root / "5.png")))
    empty = collate_image_text([ds[3]])
    assert empty.images is None and empty.captions == [] and len(empty.skipped) == 1


def test_image_folder_dataset(folder) -> None:
    root, _ = folder
    ds = ImageFolderDataset(root, ["0.png", "3.png", "missing.png", "5.png"], TRANSFORM)
    batch = collate_images([ds[i] for i in range(len(ds))])
    assert batch.indices.tolist() == [0, 3] and batch.images.shape == (2, 3, 16, 16)
    assert [s.name for s in batch.skipped] == ["3.png", "missing.png"]
    assert skip_category(batch.skipped[1].reason) == "file not found"


def test_iter_images_is_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ("b.png", "a/z.JPG", "a/y.webp", "c/d/e.jpeg", "notes.txt", "a/.hidden/x.gif"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert iter_images(tmp_path) == ["a/.hidden/x.gif", "a/y.webp", "a/z.JPG", "b.png", "c/d/e.jpeg"]


def test_preloaded_items_equal_decoded_ones_bit_for_bit(folder) -> None:
    root, samples = folder
    plain = ImageTextDataset(root, samples, TRANSFORM, seed=3)
    cached = ImageTextDataset(root, samples, TRANSFORM, seed=3)
    seen = []
    assert cached.preload(progress=lambda done, total: seen.append((done, total))) == 6 * 16 * 16 * 3
    assert seen[-1] == (6, 6)
    for i in range(6):
        a, b = plain[i], cached[i]
        assert a[0] == b[0] and a[2:] == b[2:]  # index, caption, name, reason
        assert (a[1] is None and b[1] is None) or torch.equal(a[1], b[1])
    assert cached[3][1] is None and skip_category(cached[3][4]) == "not an image"


def test_hard_negative_captions(folder) -> None:
    root, samples = folder
    samples[0].meta["negatives"] = ["false one", "false two"]
    samples[1].meta["negatives"] = ["", 5]  # nothing usable
    ds = ImageTextDataset(root, samples, TRANSFORM, seed=1, with_negatives=True)
    assert ds.negative(0) in ("false one", "false two") and ds.negative(1) is None and ds.negative(2) is None
    picks = set()
    for epoch in range(10):
        ds.set_epoch(epoch)
        picks.add(ds.negative(0))
    assert picks == {"false one", "false two"}
    batch = collate_image_text([ds[i] for i in range(6)])
    assert batch.negatives == [ds.negative(0)] and len(batch.captions) == 5
    assert collate_image_text([ImageTextDataset(root, samples, TRANSFORM)[0]]).negatives == []


def test_negative_types_restrict_the_draw_and_fall_back_to_all(folder) -> None:
    root, samples = folder
    samples[0].meta.update(negatives=["rep a", "swap b", "rep c", "rel d"],
                           negative_types=["replace_attribute", "swap_attributes", "replace_attribute", "swap_relation"])
    samples[1].meta.update(negatives=["rep e"], negative_types=["replace_attribute"])
    ds = ImageTextDataset(root, samples, TRANSFORM, seed=1, with_negatives=True, negative_types=["swap_attributes", "swap_relation"])
    picks = set()
    for epoch in range(30):
        ds.set_epoch(epoch)
        picks.add(ds.negative(0))
        assert ds.negative(1) == "rep e"  # none of the asked kinds: any negative
    assert picks == {"swap b", "rel d"}
