"""Question-answer pairs about `shapes` scenes, generated from the manifest's scene descriptions.

Every question has one true single-word answer that follows from the ``objects`` and ``layout`` of a
``captions.jsonl`` line, and names only objects it can refer to unambiguously:

- ``count``: how many objects / <colour> objects / <shape>s ("zero" .. "three");
- ``color``: what colour the <shape> is, asked only when exactly one object has that shape;
- ``exists``: is there a <colour> <shape>? Balanced: the questions of a split alternate between
  "yes" (an object of the scene) and "no" (one object's colour or shape replaced by one that no
  object of the scene has, so the answer cannot depend on a near-miss the image leaves unclear);
- ``left_right``: only in side-by-side layouts (``horizontal``, ``row``), where left and right are
  well defined: what shape / colour is next to the <colour> <shape> on one side (asked only when
  exactly one object lies on that side), or is the A to the left / right of the B (yes / no). A
  <colour> <shape> referent is used only when no other object has that colour and shape.

Phrasings vary by template and are drawn from a generator seeded by ``(seed, split)``, so a rerun
writes the same file. :func:`write_vqa` writes ``SPLIT/vqa.jsonl`` next to each split's
``captions.jsonl``: lines ``{"image", "question", "answers", "type"}`` whose ``answers`` repeat the one
exact answer ten times (the VQA annotator count), so VQA accuracy reduces to exact match.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coembed.data.synthetic.shapes import COLORS, LAYOUT_WEIGHTS, PLURALS, SHAPES, SIZES
from coembed.errors import DataError
from coembed.io import atomic_write_text, read_jsonl

QUESTION_TYPES = ("count", "color", "exists", "left_right")
ANSWERS_PER_QUESTION = 10  # VQA's annotators per question
NUMBER_WORDS = ("zero", "one", "two", "three")
SIDE_BY_SIDE = ("horizontal", "row")  # layouts whose objects are ordered left to right
VQA_FILE = "vqa.jsonl"
SPLITS = ("train", "val", "test", "heldout")

COUNT_ALL = ("how many objects are there?", "how many shapes are in the image?", "how many things can you see?")
COUNT_COLOR = ("how many {c} objects are there?", "how many {c} shapes are in the image?", "how many {c} things can you see?")
COUNT_SHAPE = ("how many {ss} are there?", "how many {ss} are in the image?", "how many {ss} can you see?")
COLOR_OF = ("what colour is the {s}?", "what color is the {s}?", "which colour is the {s}?", "the {s} is what colour?")
EXISTS = ("is there {a} {c} {s}?", "is there {a} {c} {s} in the image?", "can you see {a} {c} {s}?",
          "does the picture contain {a} {c} {s}?")
SHAPE_BESIDE = ("what shape is to the {side} of the {c} {s}?", "what shape is on the {side} of the {c} {s}?",
                "which shape is {side} of the {c} {s}?")
COLOR_BESIDE = ("what colour is the shape to the {side} of the {c} {s}?", "what color is the object {side} of the {c} {s}?")
IS_BESIDE = ("is the {c} {s} to the {side} of the {c2} {s2}?", "is the {c} {s} {side} of the {c2} {s2}?",
             "is the {c} {s} on the {side} of the {c2} {s2}?")


@dataclass(frozen=True)
class SceneObject:
    """One object of a manifest line's ``objects``."""

    shape: str
    color: str
    size: str
    x: float
    y: float


@dataclass(frozen=True)
class QA:
    """One generated question with its exact answer and type."""

    question: str
    answer: str
    type: str


# ----------------------------------------------------------------------------- reading scenes
def parse_objects(line: dict[str, Any], where: str) -> tuple[str, list[SceneObject]]:
    """``(layout, objects)`` of a `shapes` manifest line.

    Raises:
        DataError: the line has no valid ``layout`` or ``objects`` (names ``where``, the file and line).
    """
    layout, objects = line.get("layout"), line.get("objects")
    if layout not in LAYOUT_WEIGHTS:
        raise DataError(f"{where}: 'layout' must be one of {', '.join(LAYOUT_WEIGHTS)}, got {layout!r:.40}; "
                        "is this a `coembed data shapes` folder?")
    if not isinstance(objects, list) or not objects:
        raise DataError(f"{where}: 'objects' must be a non-empty list of scene objects")
    return layout, [_parse_object(o, where) for o in objects]


def _parse_object(obj: Any, where: str) -> SceneObject:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: every entry of 'objects' must be an object, got {obj!r:.40}")
    for name, allowed in (("shape", SHAPES), ("color", tuple(COLORS)), ("size", tuple(SIZES))):
        if obj.get(name) not in allowed:
            raise DataError(f"{where}: objects[].{name} must be one of {', '.join(allowed)}, got {obj.get(name)!r:.40}")
    for name in ("x", "y"):
        if isinstance(obj.get(name), bool) or not isinstance(obj.get(name), (int, float)):
            raise DataError(f"{where}: objects[].{name} must be a number, got {obj.get(name)!r:.40}")
    return SceneObject(obj["shape"], obj["color"], obj["size"], float(obj["x"]), float(obj["y"]))


# ----------------------------------------------------------------------------- helpers
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return PLURALS.get(shape, shape + "s")


def _unique_referents(objects: Sequence[SceneObject]) -> list[int]:
    """Indices of the objects no other object shares colour and shape with ("the red circle" is
    ambiguous when a small and a large red circle are both there)."""
    pairs = Counter((o.color, o.shape) for o in objects)
    return [i for i, o in enumerate(objects) if pairs[(o.color, o.shape)] == 1]


def _fill(rng: random.Random, templates: Sequence[str], **words: str) -> str:
    return rng.choice(templates).format(**words)


# ----------------------------------------------------------------------------- question makers
def count_question(objects: Sequence[SceneObject], rng: random.Random) -> QA:
    """How many objects, objects of a colour or objects of a shape (present or not)."""
    kind = rng.choice(("all", "color", "shape"))
    if kind == "all":
        return QA(rng.choice(COUNT_ALL), NUMBER_WORDS[len(objects)], "count")
    attr, values = ("color", tuple(COLORS)) if kind == "color" else ("shape", SHAPES)
    present = sorted({getattr(o, attr) for o in objects})
    # Mostly ask about a value in the scene; sometimes about an absent one (answer "zero").
    value = rng.choice(present) if rng.random() < 0.75 else rng.choice([v for v in values if v not in present])
    n = sum(getattr(o, attr) == value for o in objects)
    question = _fill(rng, COUNT_COLOR, c=value) if kind == "color" else _fill(rng, COUNT_SHAPE, ss=_plural(value))
    return QA(question, NUMBER_WORDS[n], "count")


def color_question(objects: Sequence[SceneObject], rng: random.Random) -> QA | None:
    """The colour of the one object of some shape (None when every shape occurs twice)."""
    shapes = Counter(o.shape for o in objects)
    single = [o for o in objects if shapes[o.shape] == 1]
    if not single:
        return None
    obj = rng.choice(single)
    return QA(_fill(rng, COLOR_OF, s=obj.shape), obj.color, "color")


def exists_question(objects: Sequence[SceneObject], rng: random.Random, answer: str) -> QA:
    """Is there a <colour> <shape>? ``answer`` "yes" names an object of the scene; "no" replaces one
    object's colour or shape with a value no object of the scene has."""
    obj = rng.choice(objects)
    color, shape = obj.color, obj.shape
    if answer == "no":
        absent_colors = [c for c in COLORS if c not in {o.color for o in objects}]
        absent_shapes = [s for s in SHAPES if s not in {o.shape for o in objects}]
        if rng.random() < 0.5:
            color = rng.choice(absent_colors)
        else:
            shape = rng.choice(absent_shapes)
    return QA(_fill(rng, EXISTS, a=_article(color), c=color, s=shape), answer, "exists")


def left_right_question(layout: str, objects: Sequence[SceneObject], rng: random.Random) -> QA | None:
    """A question about left and right in a side-by-side layout (None in other layouts)."""
    if layout not in SIDE_BY_SIDE or len(objects) < 2:
        return None
    named = _unique_referents(objects)
    makers = [_beside_question, _is_beside_question]
    rng.shuffle(makers)
    for make in makers:
        qa = make(objects, named, rng)
        if qa is not None:
            return qa
    return None


def _beside_question(objects: Sequence[SceneObject], named: list[int], rng: random.Random) -> QA | None:
    """What shape / colour is on one side of a named object, when exactly one object is on that side."""
    options = []
    for i in named:
        for side in ("left", "right"):
            beside = [o for o in objects if (o.x < objects[i].x if side == "left" else o.x > objects[i].x)]
            if len(beside) == 1:
                options.append((objects[i], side, beside[0]))
    if not options:
        return None
    ref, side, other = rng.choice(options)
    if rng.random() < 0.5:
        return QA(_fill(rng, SHAPE_BESIDE, side=side, c=ref.color, s=ref.shape), other.shape, "left_right")
    return QA(_fill(rng, COLOR_BESIDE, side=side, c=ref.color, s=ref.shape), other.color, "left_right")


def _is_beside_question(objects: Sequence[SceneObject], named: list[int], rng: random.Random) -> QA | None:
    """Is the A to the left / right of the B? (two named objects; yes or no)."""
    if len(named) < 2:
        return None
    i, j = rng.sample(named, 2)
    a, b = objects[i], objects[j]
    side = rng.choice(("left", "right"))
    truth = a.x < b.x if side == "left" else a.x > b.x
    question = _fill(rng, IS_BESIDE, side=side, c=a.color, s=a.shape, c2=b.color, s2=b.shape)
    return QA(question, "yes" if truth else "no", "left_right")


# ----------------------------------------------------------------------------- per image and split
class _ExistsBalance:
    """Alternates the answers of a split's ``exists`` questions between yes and no."""

    def __init__(self, rng: random.Random) -> None:
        self.next = rng.choice(("yes", "no"))

    def advance(self) -> None:
        """Called when an ``exists`` question with answer ``self.next`` is kept."""
        self.next = "no" if self.next == "yes" else "yes"


def image_questions(layout: str, objects: Sequence[SceneObject], n: int, rng: random.Random,
                    balance: _ExistsBalance) -> list[QA]:
    """Up to ``n`` distinct questions about one scene, of as many different types as apply."""
    makers: dict[str, Callable[[], QA | None]] = {
        "count": lambda: count_question(objects, rng),
        "color": lambda: color_question(objects, rng),
        "exists": lambda: exists_question(objects, rng, balance.next),
        "left_right": lambda: left_right_question(layout, objects, rng),
    }
    order = list(QUESTION_TYPES)
    rng.shuffle(order)
    out: list[QA] = []
    for attempt in range(8 * n):  # types cycle in a shuffled order; a repeated question is drawn again
        if len(out) == n:
            break
        qa = makers[order[attempt % len(order)]]()
        if qa is not None and all(qa.question != q.question for q in out):
            out.append(qa)
            if qa.type == "exists":
                balance.advance()
    return out


def split_questions(manifest: Path, per_image: int, seed: int, split: str) -> list[dict[str, Any]]:
    """The ``vqa.jsonl`` lines of one split's manifest."""
    rng = random.Random(f"vqa-{seed}-{split}")
    balance = _ExistsBalance(rng)
    lines = []
    for lineno, line in read_jsonl(manifest):
        where = f"{manifest}:{lineno}"
        image = line.get("image")
        if not isinstance(image, str) or not image:
            raise DataError(f"{where}: 'image' must be a non-empty string")
        layout, objects = parse_objects(line, where)
        for qa in image_questions(layout, objects, per_image, rng, balance):
            lines.append({"image": image, "question": qa.question, "answers": [qa.answer] * ANSWERS_PER_QUESTION,
                          "type": qa.type})
    return lines


def write_vqa(shapes_dir: str | os.PathLike, questions_per_image: int = 3, seed: int = 0) -> dict[str, Any]:
    """Write ``SPLIT/vqa.jsonl`` for every split folder of a `shapes` dataset that has a manifest.

    Args:
        shapes_dir: a folder written by ``coembed data shapes``.
        questions_per_image: questions asked about each image (fewer when fewer distinct ones apply).
        seed: the questions are a function of the seed and the manifests.

    Returns:
        Per split: ``questions``, ``images`` and ``per_type`` counts, and the share of "yes" among
        the ``exists`` answers.

    Raises:
        ValueError: ``questions_per_image`` is not a positive integer.
        DataError: the folder has no split with a ``captions.jsonl``, or a line lacks scene fields.
    """
    if isinstance(questions_per_image, bool) or not isinstance(questions_per_image, int) or questions_per_image < 1:
        raise ValueError(f"questions_per_image must be a positive integer, got {questions_per_image!r}")
    root = Path(shapes_dir)
    if not root.is_dir():
        raise DataError(f"shapes folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    splits = [s for s in SPLITS if (root / s / "captions.jsonl").is_file()]
    if not splits:
        raise DataError(f"{root} has no split folder with a captions.jsonl ({', '.join(SPLITS)}); "
                        "generate one with `coembed data shapes --out DIR`")
    summary = {}
    for split in splits:
        lines = split_questions(root / split / "captions.jsonl", questions_per_image, seed, split)
        atomic_write_text(root / split / VQA_FILE, "".join(json.dumps(x) + "\n" for x in lines))
        summary[split] = _split_summary(lines)
    return summary


def _split_summary(lines: list[dict[str, Any]]) -> dict[str, Any]:
    exists = [x["answers"][0] for x in lines if x["type"] == "exists"]
    return {"questions": len(lines), "images": len({x["image"] for x in lines}),
            "per_type": dict(Counter(x["type"] for x in lines)),
            "exists_yes_share": sum(a == "yes" for a in exists) / len(exists) if exists else None}


def read_vqa(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a ``vqa.jsonl`` file, checked.

    Raises:
        DataError: a line lacks a string ``image``, ``question`` or ``type`` or a non-empty list of
            string ``answers`` (names the file and line).
    """
    items = []
    for lineno, line in read_jsonl(path):
        for name in ("image", "question", "type"):
            if not isinstance(line.get(name), str) or not line[name]:
                raise DataError(f"{path}:{lineno}: '{name}' must be a non-empty string")
        answers = line.get("answers")
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise DataError(f"{path}:{lineno}: 'answers' must be a non-empty list of strings")
        items.append(line)
    return items
