"""The `shapes` generator: captions parsed back by an independent reader must describe the scene drawn,
test descriptions are unique, held-out pairs stay out of training, hard negatives are false, and the
pixels show the objects the manifest lists."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coembed.data.synthetic.shapes import COLORS, HELDOUT_PAIRS, SHAPES, SIZES, ShapesConfig, generate

SIZE_OF = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
SHAPE_OF = {"circle": "circle", "disc": "circle", "square": "square", "triangle": "triangle", "diamond": "diamond",
            "rhombus": "diamond", "star": "star", "cross": "cross", "plus sign": "cross", "ring": "ring", "donut": "ring",
            "heart": "heart"}
PLURAL_OF = {"crosses": "cross", "plus signs": "plus sign", "rhombuses": "rhombus"}
_SHAPE_WORDS = sorted(list(SHAPE_OF) + list(PLURAL_OF) + [s + "s" for s in SHAPE_OF if s not in ("cross", "rhombus", "plus sign")],
                      key=len, reverse=True)
OBJECT = re.compile(rf"\b(a|an|two) ({'|'.join(SIZE_OF)}) ({'|'.join(COLORS)}) ({'|'.join(_SHAPE_WORDS)})\b")


def parse(caption: str) -> tuple:
    """A naive reader of the caption language -> (layout, position, objects in canonical order).

    Written from the templates' meaning, not from the generator's code: which object is left / on
    top follows from the words between and around the object phrases.
    """
    found = list(OBJECT.finditer(caption))
    objs = []
    for m in found:
        shape = PLURAL_OF.get(m.group(4), m.group(4))
        shape = shape if shape in SHAPE_OF else shape[:-1]
        objs.append((m.group(1) == "two", (SIZE_OF[m.group(2)], m.group(3), SHAPE_OF[shape])))
    if any(two for two, _ in objs):
        return ("count>1",)
    attrs = [a for _, a in objs]
    gaps = [caption[found[i].end():found[i + 1].start()] for i in range(len(found) - 1)]
    before, after = caption[: found[0].start()], caption[found[-1].end():]
    if len(attrs) == 1:
        words = before + after
        position = "left" if "left" in words else "right" if "right" in words else "middle" if re.search("middle|cent", words) else "?"
        return ("single", position, tuple(attrs))
    if len(attrs) == 3:
        reverse = "right to left" in after
        assert reverse or "left to right" in before + after or "left" in gaps[0], caption
        return ("row", "", tuple(attrs[::-1] if reverse else attrs))
    gap = gaps[0]
    first_is_left = {"left of": True, "right of": False, "on the left and": True, "on the right and": False}
    first_is_top = {"above": True, "over": True, "on top of": True, "below": False, "under": False, "beneath": False,
                    "at the top and": True, "at the bottom and": False}
    for table, layout in ((first_is_left, "horizontal"), (first_is_top, "vertical")):
        for words, first in table.items():
            if gap.strip().endswith(words) or gap.strip() == words:
                return (layout, "", tuple(attrs if first else attrs[::-1]))
    if gap.strip() == "there is":  # "<relation> B there is A": A stands in that relation to B
        rel = before.strip()
        for table, layout in ((first_is_left, "horizontal"), (first_is_top, "vertical")):
            for words, first in table.items():
                if rel.endswith(words):
                    return (layout, "", tuple(attrs[::-1] if first else attrs))
    if gap.strip() == "and":
        layout = "horizontal" if "left to right" in after else "vertical" if "top to bottom" in after else "?"
        return (layout, "", tuple(attrs))
    raise AssertionError(f"unparsed caption: {caption!r}")


def scene_key(line: dict) -> tuple:
    return (line["layout"], line.get("position", ""), tuple((o["size"], o["color"], o["shape"]) for o in line["objects"]))


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate(ShapesConfig(train=1200, val=50, test=400, heldout=100, workers=2, seed=3), root)
    return root


def test_meta_and_layout(data: Path) -> None:
    meta = json.loads((data / "meta.json").read_text())
    assert meta["splits"] == {"train": 1200, "val": 50, "test": 400, "heldout": 100}
    assert len(meta["shapes"]) >= 8 and len(meta["colors"]) >= 8 and len(meta["sizes"]) >= 2
    for split, n in meta["splits"].items():
        lines = _lines(data / split / "captions.jsonl")
        assert len(lines) == n and all((data / split / x["image"]).is_file() for x in lines)
        assert len(list((data / split / "images").iterdir())) == n
    assert {"shape", "color"} <= set(meta["zeroshot_templates"])


@pytest.mark.parametrize("split", ["train", "val", "test", "heldout"])
def test_every_caption_is_true_of_its_scene(data: Path, split: str) -> None:
    for line in _lines(data / split / "captions.jsonl"):
        caps = line["captions"]
        assert len(caps) >= 5 and len(set(caps)) == len(caps)
        assert {parse(c) for c in caps} == {scene_key(line)}, caps


def test_captions_are_varied(data: Path) -> None:
    caps = [c for x in _lines(data / "train" / "captions.jsonl") for c in x["captions"]]
    words = Counter(w for c in caps for w in c.split())
    for synonyms in (("little", "tiny", "big"), ("disc", "donut", "rhombus", "plus"), ("over", "beneath", "under")):
        assert all(words[w] > 0 for w in synonyms)
    starts = Counter(" ".join(c.split()[:2]) for c in caps)
    assert len(starts) >= 15  # word orders and prefixes vary


def test_scene_contents_cover_the_attribute_space(data: Path) -> None:
    lines = _lines(data / "train" / "captions.jsonl")
    objects = [o for x in lines for o in x["objects"]]
    assert {o["shape"] for o in objects} == set(SHAPES) and {o["color"] for o in objects} == set(COLORS)
    assert {o["size"] for o in objects} == set(SIZES)
    counts = Counter(len(x["objects"]) for x in lines)
    assert set(counts) == {1, 2, 3} and min(counts.values()) > 0.1 * len(lines)


def test_relations_are_well_defined(data: Path) -> None:
    for line in _lines(data / "train" / "captions.jsonl"):
        objs, layout = line["objects"], line["layout"]
        r = [SIZES[o["size"]] for o in objs]
        if layout in ("horizontal", "row"):
            for a, b, ra, rb in zip(objs, objs[1:], r, r[1:]):
                assert b["x"] - a["x"] >= ra + rb  # left object entirely left of the right one
        if layout == "horizontal":
            assert abs(objs[0]["y"] - objs[1]["y"]) <= 0.07
        if layout == "vertical":
            assert objs[1]["y"] - objs[0]["y"] >= r[0] + r[1] and abs(objs[0]["x"] - objs[1]["x"]) <= 0.07
        if layout == "single":
            third = ("left", "middle", "right").index(line["position"])
            assert third / 3 <= objs[0]["x"] <= (third + 1) / 3


def test_test_descriptions_are_unique(data: Path) -> None:
    lines = _lines(data / "test" / "captions.jsonl")
    keys = [scene_key(x) for x in lines]
    assert len(set(keys)) == len(keys)
    owners: dict[str, int] = {}
    for i, line in enumerate(lines):
        for c in line["captions"]:
            assert owners.setdefault(c, i) == i  # no caption string belongs to two test images


def test_heldout_pairs(data: Path) -> None:
    banned = {tuple(p) for p in HELDOUT_PAIRS}
    assert len({c for c, _ in banned}) == len(banned) == len({s for _, s in banned}) == 8
    for split in ("train", "val", "test"):
        assert not any((o["color"], o["shape"]) in banned for x in _lines(data / split / "captions.jsonl") for o in x["objects"])
    for line in _lines(data / "heldout" / "captions.jsonl"):
        assert any((o["color"], o["shape"]) in banned for o in line["objects"])
    assert json.loads((data / "meta.json").read_text())["heldout_pairs"] == [list(p) for p in HELDOUT_PAIRS]


def test_hard_negatives_are_minimal_and_false(data: Path) -> None:
    lines = {x["image"]: x for x in _lines(data / "test" / "captions.jsonl")}
    items = _lines(data / "test" / "hard_negatives.jsonl")
    assert [x["image"] for x in items] == list(lines)
    kinds = Counter()
    for item in items:
        truth = scene_key(lines[item["image"]])
        assert parse(item["positive"]) == truth and item["positive"] in lines[item["image"]]["captions"]
        for neg in item["negatives"]:
            kinds[neg["type"]] += 1
            assert parse(neg["caption"]) != truth and neg["caption"] != item["positive"]
            changed = sum(a != b for a, b in zip(neg["caption"].split(), item["positive"].split()))
            assert changed <= 4 or neg["type"] == "swap_relation"
    assert set(kinds) == {"swap_attributes", "swap_relation", "change_count"}


def test_pixels_show_the_listed_colours(data: Path) -> None:
    side = 64
    for line in _lines(data / "val" / "captions.jsonl"):
        img = np.asarray(Image.open(data / "val" / line["image"]).convert("RGB")).astype(int)
        assert img.shape == (side, side, 3)
        for o in line["objects"]:
            if o["shape"] in ("ring", "heart", "star"):
                continue  # their centre pixel is background or an edge
            x, y = int(o["x"] * side), int(o["y"] * side)
            want = np.array(COLORS[o["color"]])
            assert np.abs(img[y, x] - want).max() <= 40, (line["image"], o)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_deterministic_for_a_seed_whatever_the_workers(tmp_path: Path) -> None:
    sizes = {"train": 520, "val": 5, "test": 20, "heldout": 5}  # enough to use the process pool
    a = generate(ShapesConfig(**sizes, seed=1, workers=1), tmp_path / "a")
    generate(ShapesConfig(**sizes, seed=1, workers=2), tmp_path / "b")
    generate(ShapesConfig(**sizes, seed=2, workers=1), tmp_path / "c")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    assert a == json.loads((tmp_path / "a" / "meta.json").read_text())


@pytest.mark.parametrize(("field", "value", "message"), [
    ("image_size", 16, "image_size must be at least 32"), ("train", -1, "train must be >= 0"),
    ("workers", 0, "workers must be >= 1"), ("test", 2.5, "test must be an integer"),
])
def test_config_errors_name_the_field(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShapesConfig(**{field: value})


def test_training_negatives_change_one_attribute_of_one_object(data: Path) -> None:
    banned = {tuple(p) for p in HELDOUT_PAIRS}
    for split in ("train", "val"):
        for line in _lines(data / split / "captions.jsonl"):
            truth = scene_key(line)
            assert 1 <= len(line["negatives"]) <= 4
            for neg in line["negatives"]:
                key = parse(neg)
                assert key[:2] == truth[:2] and key != truth  # same layout, false
                changed = [(a, b) for a, b in zip(key[2], truth[2]) if a != b]
                assert len(changed) == 1 and sum(x != y for x, y in zip(*changed[0])) == 1, (neg, line["captions"][0])
                assert not any((c, s) in banned for _, c, s in key[2])
    for split in ("test", "heldout"):
        assert not any("negatives" in x for x in _lines(data / split / "captions.jsonl"))


def test_object_box_holds_every_drawn_pixel() -> None:
    """Pixels that differ from the same seed's empty scene (the background is drawn first) lie in the
    union of the objects' boxes; every shape, both sizes, worst-case jitter over many seeds."""
    import random as pyrandom

    from coembed.data.synthetic.shapes import Scene, object_box, render, sample_scene

    size = 64
    rng = pyrandom.Random(0)
    for i in range(120):
        scene = sample_scene(rng)
        drawn = np.asarray(render(scene, size, [7, i]), dtype=np.int16)
        empty = np.asarray(render(Scene(scene.layout, ()), size, [7, i]), dtype=np.int16)
        changed = np.abs(drawn - empty).max(-1) > 0  # (H, W)
        inside = np.zeros_like(changed)
        for obj in scene.objects:
            x0, y0, x1, y1 = object_box(obj, size)
            inside[max(0, int(np.floor(y0))):int(np.ceil(y1)), max(0, int(np.floor(x0))):int(np.ceil(x1))] = True
        assert changed.any() and not (changed & ~inside).any(), (i, scene)


def test_winoground_counterparts_show_what_the_negative_says(data: Path) -> None:
    lines = {x["image"]: x for x in _lines(data / "test" / "captions.jsonl")}
    items = _lines(data / "test" / "winoground.jsonl")
    assert {x["type"] for x in items} == {"swap_attributes", "swap_relation"}
    assert len(items) > len(lines)  # one relation counterpart per scene, plus attribute ones for multi-object scenes
    banned = {tuple(p) for p in HELDOUT_PAIRS}
    for item in items:
        truth = scene_key(lines[item["image_0"]])
        other = scene_key({"layout": item["layout"], "position": item.get("position_1", ""), "objects": item["objects_1"]})
        assert parse(item["caption_0"]) == truth and parse(item["caption_1"]) == other != truth
        assert sorted(a for a in truth[2]) == sorted(a for a in other[2]) or item["type"] == "swap_attributes"
        assert not any((c, s) in banned for _, c, s in other[2])
        img = Image.open(data / "test" / item["image_1"])
        assert img.size == (64, 64)


def test_swap_training_negatives_are_false_and_typed(tmp_path: Path) -> None:
    generate(ShapesConfig(train=200, val=5, test=5, heldout=0, workers=1, seed=4, train_swap_negatives=True), tmp_path)
    kinds = Counter()
    for line in _lines(tmp_path / "train" / "captions.jsonl"):
        truth = scene_key(line)
        assert len(line["negatives"]) == len(line["negative_types"])
        for neg, kind in zip(line["negatives"], line["negative_types"]):
            kinds[kind] += 1
            key = parse(neg)
            assert key != truth and key[0] == truth[0], (neg, line["captions"][0])
            if kind == "swap_relation" and truth[0] != "single":
                assert key[2] == truth[2][::-1]
            if kind == "swap_attributes":
                assert sorted(x for a in key[2] for x in a) == sorted(x for a in truth[2] for x in a)
    assert set(kinds) == {"replace_attribute", "swap_attributes", "swap_relation"}
    assert all("swap" not in t for x in _lines(tmp_path / "val" / "captions.jsonl") for t in x["negative_types"])
