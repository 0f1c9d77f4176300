"""`coembed data vqa`: every answer is true of the scene (checked by an independent reader of the
questions), no question names an ambiguous object, exists answers are balanced, reruns are identical."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from coembed.cli.main import main
from coembed.data.synthetic.shapes import COLORS, SHAPES
from coembed.data.synthetic.vqa import read_vqa, write_vqa
from coembed.errors import DataError

NUMBERS = {"zero": 0, "one": 1, "two": 2, "three": 3}
PLURAL_OF = {"crosses": "cross", **{s + "s": s for s in SHAPES if s != "cross"}}
WORD = re.compile(r"[a-z]+")


@pytest.fixture(scope="module")
def vqa_copy(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's shapes manifests copied (images are not needed), with vqa.jsonl written at 3 per image."""
    root = tmp_path_factory.mktemp("vqa") / "shapes"
    for split in ("train", "val", "test", "heldout"):
        (root / split).mkdir(parents=True)
        shutil.copy(shapes_data / split / "captions.jsonl", root / split / "captions.jsonl")
    write_vqa(root, questions_per_image=3, seed=0)
    return root


def scenes(root: Path, split: str) -> dict[str, dict]:
    return {x["image"]: x for x in map(json.loads, (root / split / "captions.jsonl").read_text().splitlines())}


def referents(question: str) -> list[tuple[str, str]]:
    """(colour, shape) phrases in the question, in order."""
    words = WORD.findall(question)
    return [(a, b) for a, b in zip(words, words[1:]) if a in COLORS and b in SHAPES]


def independent_answer(question: str, layout: str, objects: list[dict]) -> tuple[str, bool]:
    """The true answer, read from the question's words and the scene alone; and whether every object
    the question names by "the ..." is unambiguous."""
    words = WORD.findall(question)
    named = referents(question)
    match = lambda o, c, s: o["color"] == c and o["shape"] == s  # noqa: E731
    unique = all(sum(match(o, c, s) for o in objects) == 1 for c, s in named if f"the {c} {s}" in question)
    if words[:2] == ["how", "many"]:
        color = next((w for w in words if w in COLORS), None)
        shape = next((PLURAL_OF[w] for w in words if w in PLURAL_OF), None)
        n = sum((color is None or o["color"] == color) and (shape is None or o["shape"] == shape) for o in objects)
        return [k for k, v in NUMBERS.items() if v == n][0], True
    if "left" in words or "right" in words:
        assert layout in ("horizontal", "row"), question
        side = "left" if "left" in words else "right"
        xs = {(o["color"], o["shape"]): o["x"] for o in objects}
        if words[0] == "is":
            (c1, s1), (c2, s2) = named
            truth = xs[c1, s1] < xs[c2, s2] if side == "left" else xs[c1, s1] > xs[c2, s2]
            return ("yes" if truth else "no"), unique
        (c, s), = named
        ref_x = xs[c, s]
        beside = [o for o in objects if (o["x"] < ref_x if side == "left" else o["x"] > ref_x)]
        unique = unique and len(beside) == 1
        return (beside[0]["shape"] if "shape" in words[:2] else beside[0]["color"]), unique
    if "colour" in words or "color" in words:
        shape = next(w for w in words if w in SHAPES)
        having = [o for o in objects if o["shape"] == shape]
        return having[0]["color"], len(having) == 1
    (c, s), = named
    return ("yes" if any(match(o, c, s) for o in objects) else "no"), True


@pytest.mark.parametrize("split", ["train", "val", "test", "heldout"])
def test_every_answer_is_true_and_unambiguous(vqa_copy: Path, split: str) -> None:
    scene_of = scenes(vqa_copy, split)
    items = read_vqa(vqa_copy / split / "vqa.jsonl")
    assert len(items) >= 2 * len(scene_of)
    for item in items:
        scene = scene_of[item["image"]]
        answer, unambiguous = independent_answer(item["question"], scene["layout"], scene["objects"])
        assert unambiguous, item
        assert item["answers"] == [answer] * 10, (item, scene["objects"])
        assert len(answer.split()) == 1 and item["question"].endswith("?")


def test_types_answers_and_balance(vqa_copy: Path) -> None:
    items = read_vqa(vqa_copy / "train" / "vqa.jsonl")
    types = Counter(x["type"] for x in items)
    assert set(types) == {"count", "color", "exists", "left_right"} and min(types.values()) > 0.1 * len(items)
    exists = Counter(x["answers"][0] for x in items if x["type"] == "exists")
    assert set(exists) == {"yes", "no"} and abs(exists["yes"] - exists["no"]) <= 1  # alternated: exact balance
    beside = Counter(x["answers"][0] for x in items if x["type"] == "left_right" and x["question"].startswith("is "))
    assert 0.3 < beside["yes"] / (beside["yes"] + beside["no"]) < 0.7
    counts = Counter(x["answers"][0] for x in items if x["type"] == "count")
    assert {"zero", "one", "two"} <= set(counts)
    phrasings = Counter(re.sub(r"\b(" + "|".join(list(COLORS) + list(SHAPES) + list(PLURAL_OF)) + r")\b", "X", x["question"])
                        for x in items)
    assert len(phrasings) >= 20  # varied templates


def test_left_right_only_in_side_by_side_layouts(vqa_copy: Path) -> None:
    scene_of = scenes(vqa_copy, "train")
    layouts = Counter(scene_of[x["image"]]["layout"] for x in read_vqa(vqa_copy / "train" / "vqa.jsonl") if x["type"] == "left_right")
    assert set(layouts) <= {"horizontal", "row"} and layouts["horizontal"] and layouts["row"]


def test_deterministic_and_seeded(vqa_copy: Path, tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    (root / "test").mkdir(parents=True)
    shutil.copy(vqa_copy / "test" / "captions.jsonl", root / "test" / "captions.jsonl")
    write_vqa(root, questions_per_image=3, seed=0)
    assert (root / "test" / "vqa.jsonl").read_bytes() == (vqa_copy / "test" / "vqa.jsonl").read_bytes()
    write_vqa(root, questions_per_image=3, seed=1)
    assert (root / "test" / "vqa.jsonl").read_bytes() != (vqa_copy / "test" / "vqa.jsonl").read_bytes()
    summary = write_vqa(root, questions_per_image=1, seed=0)
    assert summary["test"]["questions"] == summary["test"]["images"] == len(scenes(root, "test"))


def test_ambiguous_referents_are_never_asked_about(tmp_path: Path) -> None:
    """Two red circles (small and large) side by side with a star: no question may say "the red
    circle" or ask the colour of "the circle"."""
    objects = [{"shape": "circle", "color": "red", "size": "small", "x": 0.2, "y": 0.5},
               {"shape": "circle", "color": "red", "size": "large", "x": 0.5, "y": 0.5},
               {"shape": "star", "color": "blue", "size": "small", "x": 0.8, "y": 0.5}]
    (tmp_path / "test").mkdir()
    line = json.dumps({"image": "images/000000.png", "captions": ["x"], "layout": "row", "objects": objects})
    (tmp_path / "test" / "captions.jsonl").write_text((line + "\n") * 200)
    write_vqa(tmp_path, questions_per_image=4, seed=0)
    items = read_vqa(tmp_path / "test" / "vqa.jsonl")
    assert not [x for x in items if "the red circle" in x["question"] or "the circle" in x["question"]]
    # The star is the only nameable object and two objects lie left of it: no left/right question applies.
    assert not [x for x in items if x["type"] == "left_right"]
    assert {x["type"] for x in items} == {"count", "color", "exists"}
    for item in items:
        answer, unambiguous = independent_answer(item["question"], "row", objects)
        assert unambiguous and item["answers"][0] == answer, item


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        write_vqa(tmp_path / "missing")
    with pytest.raises(DataError, match="no split folder"):
        write_vqa(tmp_path)
    with pytest.raises(ValueError, match="questions_per_image"):
        write_vqa(tmp_path, questions_per_image=0)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "captions.jsonl").write_text('{"image": "a.png", "captions": ["a red circle"]}\n')
    with pytest.raises(DataError, match=r"captions.jsonl:1: 'layout'"):
        write_vqa(tmp_path)
    (tmp_path / "val" / "captions.jsonl").write_text(
        '{"image": "a.png", "layout": "single", "objects": [{"shape": "blob", "color": "red", "size": "small", "x": 0, "y": 0}]}\n')
    with pytest.raises(DataError, match=r"objects\[\]\.shape"):
        write_vqa(tmp_path)


def test_cli_writes_and_reports(vqa_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "shapes"
    (root / "val").mkdir(parents=True)
    shutil.copy(vqa_copy / "val" / "captions.jsonl", root / "val" / "captions.jsonl")
    assert main(["data", "vqa", str(root), "--per-image", "2", "--seed", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["val"]["questions"] == len(read_vqa(root / "val" / "vqa.jsonl")) == 2 * summary["val"]["images"]
    assert main(["data", "vqa", str(root)]) == 0
    assert f"val: {3 * summary['val']['images']} questions about" in capsys.readouterr().err
    assert main(["data", "vqa", str(tmp_path / "nope")]) == 2
    assert f"coembed data: error: shapes folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own refusal
        main(["data", "vqa", str(root), "--per-image", "0"])
    assert exit_info.value.code == 2 and "--per-image: expected a positive integer" in capsys.readouterr().err
