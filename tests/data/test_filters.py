"""`coembed data filter`: each ALIGN-style rule drops what it should and nothing else, the output
manifest resolves from its own folder (pointing or copying), and bad input is a clear error."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from coembed.cli.main import main
from coembed.data.datasets import read_samples
from coembed.data.filters import FilterConfig, filter_dataset, normalize_text, read_image_size, word_count
from coembed.errors import DataError
from coembed.transforms import ImageLoadError, load_image


def make_dataset(root: Path, entries: dict[str, list[str]], sizes: dict[str, tuple[int, int]] | None = None,
                 meta: dict[str, dict] | None = None) -> Path:
    """A folder with one PNG per entry (32x32 unless ``sizes`` says otherwise) and captions.jsonl."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    with open(root / "captions.jsonl", "w") as f:
        for name, captions in entries.items():
            Image.new("RGB", (sizes or {}).get(name, (32, 32)), (200, 30, 30)).save(root / "img" / name)
            f.write(json.dumps({"image": f"img/{name}", "captions": captions, **(meta or {}).get(name, {})}) + "\n")
    return root


def kept(out: Path) -> dict[str, list[str]]:
    return {Path(x["image"]).name: x["captions"] for x in map(json.loads, (out / "captions.jsonl").read_text().splitlines())}


def test_caption_rules(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", {
        "a.png": ["a red circle on the left", "12345", "--- !!! ---", "IMG_1234.jpg", "DSC01234 at the beach",
                  "see www.example.com/cat for more", "Click here to buy this print", "a royalty-free stock photo of a cat",
                  "two words", "a cat"],
        "b.png": ["a blue star at the top", "my trip 2019 in paris"],
    })
    report = filter_dataset(src, tmp_path / "out", FilterConfig())
    assert kept(tmp_path / "out") == {"a.png": ["a red circle on the left"],
                                      "b.png": ["a blue star at the top", "my trip 2019 in paris"]}
    assert report.dropped_captions == {"no letters": 2, "junk pattern": 5, "too few words": 2}
    assert report.captions_in == 12 and report.captions_kept == 3 and report.images_kept == 2
    assert report.examples["junk pattern"][0] == {"image": "img/a.png", "caption": "IMG_1234.jpg"}


def test_user_patterns_and_switching_rules_off(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", {"a.png": ["a red circle on the left", "IMG_1234.jpg", "a photo by JOHN doe", "hi"]})
    filter_dataset(src, tmp_path / "o1", FilterConfig(junk_patterns=[r"\bby \w+ doe\b"]))
    assert kept(tmp_path / "o1") == {"a.png": ["a red circle on the left"]}
    filter_dataset(src, tmp_path / "o2", FilterConfig(default_junk=False, min_words=0))
    assert kept(tmp_path / "o2") == {"a.png": ["a red circle on the left", "IMG_1234.jpg", "a photo by JOHN doe", "hi"]}


def test_frequency_rule_counts_distinct_images_of_normalised_text(tmp_path: Path) -> None:
    # "A photo of a cat." is on 3 images in three spellings; "a dog on the grass" on 2; twice on one image counts once.
    entries = {"a.png": ["A photo of a cat.", "a dog on the grass", "a dog on the grass!"],
               "b.png": ["a photo of a CAT", "a dog on the grass", "a red circle here"],
               "c.png": ["a photo, of a cat", "something unique here"]}
    src = make_dataset(tmp_path / "src", entries)
    report = filter_dataset(src, tmp_path / "o2", FilterConfig(max_images_per_text=2))
    assert report.dropped_captions == {"frequent text": 3}
    assert kept(tmp_path / "o2") == {"a.png": ["a dog on the grass", "a dog on the grass!"], "b.png": ["a dog on the grass", "a red circle here"],
                                     "c.png": ["something unique here"]}
    filter_dataset(src, tmp_path / "o3", FilterConfig(max_images_per_text=3))
    assert sum(map(len, kept(tmp_path / "o3").values())) == 8
    filter_dataset(src, tmp_path / "o1", FilterConfig(max_images_per_text=1))
    assert kept(tmp_path / "o1") == {"b.png": ["a red circle here"], "c.png": ["something unique here"]}
    filter_dataset(src, tmp_path / "o0", FilterConfig(max_images_per_text=0))  # off
    assert sum(map(len, kept(tmp_path / "o0").values())) == 8
    assert normalize_text(" A  photo, of a CAT!") == "a photo of a cat" and word_count("it's a 3-d cat_toy") == 7


def test_image_left_without_captions_is_dropped(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", {"a.png": ["IMG_0001.JPG", "image"], "b.png": ["a blue star at the top"]})
    report = filter_dataset(src, tmp_path / "out", FilterConfig())
    assert kept(tmp_path / "out") == {"b.png": ["a blue star at the top"]}
    assert report.dropped_images == {"no caption left": 1} and report.images_in == 2 and report.images_kept == 1


def test_image_size_and_aspect_rules(tmp_path: Path) -> None:
    sizes = {"ok.png": (300, 200), "small.png": (199, 400), "wide.png": (700, 200), "tall.png": (100, 301), "edge.png": (600, 200)}
    src = make_dataset(tmp_path / "src", {name: ["a thing in a picture"] for name in sizes}, sizes)
    report = filter_dataset(src, tmp_path / "out", FilterConfig(min_image_side=200, max_aspect=3, max_images_per_text=0))
    assert sorted(kept(tmp_path / "out")) == ["edge.png", "ok.png"]  # aspect exactly 3 is kept
    assert report.dropped_images == {"image too small": 2, "extreme aspect ratio": 1}
    report = filter_dataset(src, tmp_path / "out2", FilterConfig(max_aspect=0, max_images_per_text=0))
    assert report.images_kept == 5


def test_unreadable_images_and_the_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_dataset(tmp_path / "src", {"ok.png": ["a red circle here"], "big.png": ["a blue circle here"]}, {"big.png": (64, 64)})
    (src / "img" / "text.png").write_text("not an image")
    (src / "img" / "empty.png").write_bytes(b"")
    with open(src / "captions.jsonl", "a") as f:
        f.write(json.dumps({"image": "img/text.png", "captions": ["a green circle here"]}) + "\n")
        f.write(json.dumps({"image": "img/empty.png", "captions": ["a pink circle here"]}) + "\n")
    report = filter_dataset(src, tmp_path / "out", FilterConfig(max_pixels=32 * 32))
    assert sorted(kept(tmp_path / "out")) == ["ok.png"] and report.dropped_images == {"unreadable image": 3}
    details = [e["detail"] for e in report.examples["unreadable image"]]
    assert details[0].startswith("too many pixels") and details[1].startswith("not an image") and details[2].startswith("empty file")
    # Pillow's own decompression-bomb limit applies to the header read as it does to load_image.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)
    report = filter_dataset(src, tmp_path / "out2", FilterConfig())
    assert report.images_kept == 0 and report.examples["unreadable image"][0]["detail"].startswith("too many pixels")


def test_sizes_come_from_the_header_without_decoding(tmp_path: Path) -> None:
    """A PNG cut after its header: the size is read, while decoding it (load_image) fails."""
    Image.effect_noise((120, 80), 50).convert("RGB").save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:200])
    assert read_image_size(tmp_path / "cut.png") == (120, 80)
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageLoadError, match="file not found"):
        read_image_size(tmp_path / "nope.png")


def test_output_paths_resolve_through_symlinks(tmp_path: Path) -> None:
    real = make_dataset(tmp_path / "real" / "data", {"a.png": ["a red circle here"]}, meta={"a.png": {"objects": [1, 2], "layout": "row"}})
    os.symlink(real, tmp_path / "link")  # SRC given through a symlink; OUT in a sibling folder
    out = tmp_path / "elsewhere" / "out"
    filter_dataset(tmp_path / "link", out, FilterConfig())
    line = json.loads((out / "captions.jsonl").read_text())
    assert line == {"image": "../../real/data/img/a.png", "captions": ["a red circle here"], "objects": [1, 2], "layout": "row"}
    samples, _ = read_samples(out)
    assert (out / samples[0].image).resolve() == (real / "img" / "a.png").resolve()


def test_copy_images_makes_a_standalone_folder(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", {"a.png": ["a red circle here"], "b.png": ["image"]})
    report = filter_dataset(src, tmp_path / "out", FilterConfig(copy_images=True))
    shutil.rmtree(src)
    samples, _ = read_samples(tmp_path / "out")
    assert [s.image for s in samples] == ["img/a.png"] and report.images_kept == 1
    assert not (tmp_path / "out" / "img" / "b.png").exists()  # dropped images are not copied
    assert load_image(tmp_path / "out" / "img" / "a.png").size == (32, 32)


def test_openclip_csv_input(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32)).save(src / "img" / name)
    (src / "data.csv").write_text("filepath,title\nimg/a.png,a red circle here\nimg/a.png,IMG_2001.jpg\nimg/b.png,www.spam.com\n")
    report = filter_dataset(src, tmp_path / "out", FilterConfig())
    assert kept(tmp_path / "out") == {"a.png": ["a red circle here"]} and report.dropped_captions == {"junk pattern": 2}


def test_bad_manifest_lines_are_counted_and_reported(tmp_path: Path) -> None:
    src = make_dataset(tmp_path / "src", {"a.png": ["a red circle here"]})
    with open(src / "captions.jsonl", "a") as f:
        f.write("{not json\n" + json.dumps({"image": "img/missing.png", "captions": ["x y z"]}) + "\n" + json.dumps({"captions": ["a b c"]}) + "\n")
    report = filter_dataset(src, tmp_path / "out", FilterConfig())
    assert report.skipped_lines == {"invalid JSON": 1, "missing file": 1, "missing field": 1} and report.images_kept == 1
    assert "manifest: invalid JSON" in report.table()


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        filter_dataset(tmp_path / "nope", tmp_path / "out", FilterConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no captions.jsonl"):
        filter_dataset(tmp_path / "empty", tmp_path / "out", FilterConfig())
    src = make_dataset(tmp_path / "src", {"a.png": ["a red circle here"]})
    with pytest.raises(DataError, match="is the dataset folder"):
        filter_dataset(src, src, FilterConfig())
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        filter_dataset(src, tmp_path / "file", FilterConfig())
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "captions.jsonl").write_text("{bad\n[1]\n")
    with pytest.raises(DataError, match="no usable samples"):
        filter_dataset(tmp_path / "junk", tmp_path / "out", FilterConfig())


@pytest.mark.parametrize("fields, name", [({"min_words": -1}, "min_words"), ({"max_aspect": 0.5}, "max_aspect"),
                                          ({"junk_patterns": ["(["]}, "junk_patterns"), ({"junk_patterns": "abc"}, "junk_patterns"),
                                          ({"max_images_per_text": 1.5}, "max_images_per_text"), ({"copy_images": "yes"}, "copy_images")])
def test_config_errors_name_the_field(fields: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        FilterConfig(**fields)


def test_cli_table_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = make_dataset(tmp_path / "src", {"a.png": ["a red circle here", "http://x.org/a.jpg"], "b.png": ["b"]})
    assert main(["data", "filter", str(src), str(tmp_path / "out"), "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images_kept"] == 1 and report["dropped_captions"] == {"junk pattern": 1, "too few words": 1}
    assert json.loads((tmp_path / "out" / "filter_report.json").read_text()) == report
    assert main(["data", "filter", str(src), str(tmp_path / "out"), "--min-words", "0", "--junk-pattern", "circle", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "kept 1 of 2 images and 1 of 3 captions" in err and "junk pattern" in err
    assert main(["data", "filter", str(src), str(tmp_path / "out"), "--junk-pattern", "(["]) == 2
    assert "--junk-pattern: '([' is not a valid regular expression" in capsys.readouterr().err
    assert main(["data", "filter", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert f"dataset folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
