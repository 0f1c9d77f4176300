"""`shapes`: the built-in image-text benchmark (CLEVR / ShapeWorld-like scenes with true captions).

Each scene holds 1-3 objects drawn from 8 shapes x 8 colours x 2 sizes on a varied background. The
layout makes every relation a caption states well defined:

- ``single``: one object in the left, middle or right third (captions name the third);
- ``horizontal`` / ``vertical``: two objects side by side or stacked, nearly aligned on the other
  axis, so "left of" is never true of a stacked pair and "above" never of a side-by-side one;
- ``row``: three objects with clearly separated x positions, described left to right.

Every caption names every object with its size, colour and shape, plus the relation, so a caption is
true of exactly the scenes with the same *description key*. The test split holds no two scenes with
one key, which makes its captions unambiguous within it. Eight colour-shape pairs (one per shape and
one per colour) never occur in train / val / test; the ``heldout`` split is made of scenes that
contain at least one of them. The test split also gets ``hard_negatives.jsonl``: per image, its
canonical caption and minimally changed false ones (attributes swapped between two objects, the
relation reversed, a count changed), and ``winoground.jsonl`` + ``winoground/*.png``: for each swap
negative, the *counterpart* image (a scene the negative caption truly describes and the positive does
not), so that pairs of images and captions can be scored Winoground-style.

Output, per split, in the format users bring: ``SPLIT/images/NNNNNN.png`` and ``SPLIT/captions.jsonl``
lines ``{"image", "captions", "objects", "layout"}``; ``meta.json`` at the top describes the whole set.
Train and val lines also carry ``negatives``: false captions (one attribute of one object replaced)
that ``hard_negatives=true`` training uses as extra NegCLIP-style negatives; with
``train_swap_negatives`` the train lines also get swap-type negatives (attributes swapped, relation
reversed: captions of the counterpart scene), and every line lists ``negative_types`` beside them.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from coembed.data.synthetic.png import write_png
from coembed.io import atomic_write_json, atomic_write_text

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "heart")
COLORS = {
    "red": (215, 35, 35), "green": (40, 165, 60), "blue": (40, 80, 225), "yellow": (240, 215, 40),
    "purple": (135, 55, 190), "orange": (250, 135, 25), "cyan": (40, 205, 215), "pink": (250, 140, 195),
}
SIZES = {"small": 0.09, "large": 0.155}  # radius as a fraction of the image side
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "heldout": 3}
WINOGROUND_SEED_ID = 4  # render seed namespace of the counterpart images
SWAP_TYPES = ("swap_attributes", "swap_relation")
# One colour per shape (a permutation: every shape and every colour keeps 7 of its 8 partners).
HELDOUT_PAIRS = tuple((list(COLORS)[(3 * i + 1) % len(COLORS)], shape) for i, shape in enumerate(SHAPES))
LAYOUT_WEIGHTS = {"single": 0.25, "horizontal": 0.25, "vertical": 0.15, "row": 0.35}
CAPTIONS_PER_IMAGE = 5
SUPERSAMPLE = 2
RADIUS_JITTER = (0.93, 1.05)  # rendered radius = size radius x uniform(*RADIUS_JITTER)
# Largest extent of a drawn shape from its centre, in radii (the star: drawn at 1.08 r, tips
# reaching just under that on every side); the other shapes stay within 1 r.
MAX_EXTENT = 1.08
FORMAT_VERSION = 1

SIZE_WORDS = {"small": ("small", "small", "little", "tiny"), "large": ("large", "big", "big", "large")}
SHAPE_WORDS = {"circle": ("circle", "circle", "disc"), "square": ("square",), "triangle": ("triangle",),
               "diamond": ("diamond", "diamond", "rhombus"), "star": ("star",), "cross": ("cross", "cross", "plus sign"),
               "ring": ("ring", "ring", "donut"), "heart": ("heart",)}
PLURALS = {"cross": "crosses", "plus sign": "plus signs", "rhombus": "rhombuses"}
LEFT_OF = ("to the left of", "left of", "on the left of")
RIGHT_OF = ("to the right of", "right of", "on the right of")
ABOVE = ("above", "over", "on top of")
BELOW = ("below", "under", "beneath")
PREFIXES = ("", "", "", "a picture of ", "an image of ", "there is ", "a photo of ")
POSITIONS = ("left", "middle", "right")
POSITION_WORDS = {"left": ("on the left", "on the left side", "at the left"),
                  "middle": ("in the middle", "in the center", "in the centre"),
                  "right": ("on the right", "on the right side", "at the right")}


@dataclass(kw_only=True)
class ShapesConfig:
    """What ``coembed data shapes`` generates.

    Attributes:
        image_size: side of the square PNG images in pixels (at least 32).
        train: training images.
        val: validation images.
        test: test images (at most the number of distinct descriptions, about 150,000).
        heldout: images of the held-out-compositions split.
        train_swap_negatives: add swap-type negatives (the test file's kinds, on training scenes) to the
            train split's ``negatives``.
        seed: everything is a function of the seed.
        workers: processes that render images.
    """

    image_size: int = 64
    train: int = 20000
    val: int = 1000
    test: int = 1000
    heldout: int = 500
    train_swap_negatives: bool = False
    seed: int = 0
    workers: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.train_swap_negatives, bool):
            raise ValueError(f"train_swap_negatives must be true or false, got {self.train_swap_negatives!r}")
        for name in ("image_size", "train", "val", "test", "heldout", "seed", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {self.image_size}")
        for name in ("train", "val", "test", "heldout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


# ----------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    x: float  # centre, as a fraction of the image side
    y: float

    def attrs(self) -> tuple[str, str, str]:
        return (self.size, self.color, self.shape)


@dataclass(frozen=True)
class Scene:
    layout: str
    objects: tuple[Obj, ...]  # single: 1; horizontal: left, right; vertical: top, bottom; row: left to right
    position: str = ""  # single only: left / middle / right

    def key(self) -> tuple:
        """Equal for two scenes exactly when every caption of one is true of the other."""
        return (self.layout, self.position, tuple(o.attrs() for o in self.objects))


def _pick_attrs(rng: random.Random, n: int, heldout: bool) -> list[tuple[str, str, str]]:
    """``n`` distinct (size, colour, shape); heldout scenes contain at least one held-out pair."""
    banned = set(HELDOUT_PAIRS)
    while True:
        picks = []
        for _ in range(n):
            color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
            picks.append((rng.choice(list(SIZES)), color, shape))
        pairs = {(c, s) for _, c, s in picks}
        if len(set(picks)) < n:
            continue
        if heldout:
            if not pairs & banned:
                i = rng.randrange(n)
                color, shape = rng.choice(HELDOUT_PAIRS)
                picks[i] = (picks[i][0], color, shape)
                if len(set(picks)) < n:
                    continue
        elif pairs & banned:
            continue
        return picks


def _radius(size: str) -> float:
    return SIZES[size]


def _place_axis(rng: random.Random, radii: list[float], gap: float, margin: float = 0.02) -> list[float] | None:
    """Centres along one axis, in order, with at least ``gap`` between neighbouring edges."""
    free = 1.0 - 2 * margin - 2 * sum(radii) - gap * (len(radii) - 1)
    if free < 0:
        return None
    cuts = sorted(rng.random() * free for _ in radii)  # free space split into len+1 parts
    pos, edge = [], margin
    for i, r in enumerate(radii):
        edge += cuts[i] - (cuts[i - 1] if i else 0.0)
        pos.append(edge + r)
        edge += 2 * r + gap
    return pos


def _free(rng: random.Random, r: float, lo: float = 0.0, hi: float = 1.0, margin: float = 0.02) -> float:
    return rng.uniform(max(lo, margin + r), min(hi, 1 - margin - r))


def sample_scene(rng: random.Random, heldout: bool = False) -> Scene:
    """One random scene with well-defined relations."""
    layout = rng.choices(list(LAYOUT_WEIGHTS), weights=list(LAYOUT_WEIGHTS.values()))[0]
    n = {"single": 1, "horizontal": 2, "vertical": 2, "row": 3}[layout]
    while True:
        attrs = _pick_attrs(rng, n, heldout)
        radii = [_radius(a[0]) for a in attrs]
        scene = _layout(rng, layout, attrs, radii)
        if scene is not None:
            return scene


def _layout(rng: random.Random, layout: str, attrs: list[tuple[str, str, str]], radii: list[float]) -> Scene | None:
    make = lambda a, x, y: Obj(shape=a[2], color=a[1], size=a[0], x=round(x, 4), y=round(y, 4))  # noqa: E731
    if layout == "single":
        position = rng.choice(POSITIONS)
        third = POSITIONS.index(position) / 3
        x = _free(rng, radii[0], third + 0.04, third + 1 / 3 - 0.04) if position == "middle" else _free(rng, radii[0], third, third + 1 / 3)
        return Scene(layout, (make(attrs[0], x, _free(rng, radii[0])),), position)
    along = _place_axis(rng, radii, gap=0.08 if layout != "row" else 0.05)
    if along is None:
        return None
    if layout == "row":
        return Scene(layout, tuple(make(a, x, _free(rng, r)) for a, x, r in zip(attrs, along, radii)))
    across = _free(rng, max(radii))
    jitter = [across + rng.uniform(-0.03, 0.03) for _ in radii]
    if layout == "horizontal":
        return Scene(layout, tuple(make(a, x, y) for a, x, y in zip(attrs, along, jitter)))
    return Scene(layout, tuple(make(a, x, y) for a, x, y in zip(attrs, jitter, along)))


# ----------------------------------------------------------------------------- captions
def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: Obj, rng: random.Random | None = None, *, plural: bool = False) -> str:
    """``"a small red circle"``; with ``rng`` a random synonym, with ``plural`` ``"two small red circles"``."""
    pick = (lambda options: options[0]) if rng is None else rng.choice
    size, shape = pick(SIZE_WORDS[obj.size]), pick(SHAPE_WORDS[obj.shape])
    if plural:
        return f"two {size} {obj.color} {PLURALS.get(shape, shape + 's')}"
    return f"{_article(size)} {size} {obj.color} {shape}"


def _templates(scene: Scene, a: Callable[[int], str], rng: random.Random) -> list[Callable[[], str]]:
    """All phrasings of the scene, each built only when called (a caller picks one: building all of
    them for every caption was most of the generator's caption time); ``a(i)`` gives a
    (random-synonym) phrase of object i."""
    pick = rng.choice
    if scene.layout == "single":
        where = POSITION_WORDS[scene.position]
        return [lambda: f"{a(0)} {pick(where)}", lambda: f"{pick(where)} there is {a(0)}", lambda: f"{a(0)} {pick(where)} of the image",
                lambda: f"{pick(where)}, {a(0)}", lambda: f"a picture with {a(0)} {pick(where)}"]
    if scene.layout == "horizontal":
        return [lambda: f"{a(0)} {pick(LEFT_OF)} {a(1)}", lambda: f"{a(1)} {pick(RIGHT_OF)} {a(0)}",
                lambda: f"{a(0)} on the left and {a(1)} on the right", lambda: f"{a(1)} on the right and {a(0)} on the left",
                lambda: f"{pick(LEFT_OF)} {a(1)} there is {a(0)}", lambda: f"{a(0)} and {a(1)}, from left to right"]
    if scene.layout == "vertical":
        return [lambda: f"{a(0)} {pick(ABOVE)} {a(1)}", lambda: f"{a(1)} {pick(BELOW)} {a(0)}",
                lambda: f"{a(0)} at the top and {a(1)} at the bottom", lambda: f"{a(1)} at the bottom and {a(0)} at the top",
                lambda: f"{pick(BELOW)} {a(0)} there is {a(1)}", lambda: f"{a(0)} and {a(1)}, from top to bottom"]
    return [lambda: f"{a(0)}, {a(1)} and {a(2)} from left to right", lambda: f"from left to right: {a(0)}, {a(1)}, {a(2)}",
            lambda: f"{a(2)}, {a(1)} and {a(0)} from right to left", lambda: f"{a(0)} {pick(LEFT_OF)} {a(1)}, which is {pick(LEFT_OF)} {a(2)}",
            lambda: f"{a(0)} on the left, {a(1)} in the middle and {a(2)} on the right",
            lambda: f"three shapes: {a(0)}, {a(1)} and {a(2)}, left to right"]


def canonical_caption(scene: Scene, *, reversed_relation: bool = False) -> str:
    """The one fixed phrasing, used as the positive of the hard-negative file; with
    ``reversed_relation`` the same words with the relation (or single position) made false."""
    a = lambda i: object_phrase(scene.objects[i])  # noqa: E731
    if scene.layout == "single":
        position = {"left": "right", "middle": "left", "right": "left"}[scene.position] if reversed_relation else scene.position
        return f"{a(0)} {POSITION_WORDS[position][0]}"
    if scene.layout == "horizontal":
        return f"{a(0)} to the {'right' if reversed_relation else 'left'} of {a(1)}"
    if scene.layout == "vertical":
        return f"{a(0)} {'below' if reversed_relation else 'above'} {a(1)}"
    return f"{a(0)}, {a(1)} and {a(2)} from {'right to left' if reversed_relation else 'left to right'}"


def captions(scene: Scene, rng: random.Random, n: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """``n`` distinct true captions: the canonical one first, then varied templates and synonyms."""
    out = [canonical_caption(scene)]
    for _ in range(50):
        if len(out) >= n:
            break
        phrase = lambda i: object_phrase(scene.objects[i], rng)  # noqa: E731
        text = rng.choice(_templates(scene, phrase, rng))()
        if rng.random() < 0.3 and not text.startswith(("there", "a picture", "from", "three", "on", "at", "in")):
            text = rng.choice(PREFIXES) + text
        if text not in out:
            out.append(text)
    return out


def hard_negatives(scene: Scene) -> list[dict[str, str]]:
    """Minimal false variants of the canonical caption, each with its ``type``."""
    objs = list(scene.objects)
    out = []
    if (target := _swap_target(scene)) is not None:
        i, j, attr = target
        swapped = list(objs)
        swapped[i] = Obj(**{**asdict(objs[i]), attr: getattr(objs[j], attr)})
        swapped[j] = Obj(**{**asdict(objs[j]), attr: getattr(objs[i], attr)})
        out.append({"caption": canonical_caption(Scene(scene.layout, tuple(swapped), scene.position)), "type": "swap_attributes"})
    out.append({"caption": canonical_caption(scene, reversed_relation=True), "type": "swap_relation"})
    counted = canonical_caption(scene).replace(object_phrase(objs[0]), object_phrase(objs[0], plural=True), 1)
    out.append({"caption": counted, "type": "change_count"})
    return out


def _swap_target(scene: Scene) -> tuple[int, int, str] | None:
    """The two objects and the attribute the ``swap_attributes`` negative exchanges (None for one object)."""
    objs = list(scene.objects)
    if len(objs) < 2:
        return None
    i, j = _differing_pair(objs)
    return i, j, next(f for f in ("color", "shape", "size") if getattr(objs[i], f) != getattr(objs[j], f))


def counterpart_attrs(scene: Scene, kind: str) -> tuple[str, list[tuple[str, str, str]]] | None:
    """(position, attributes in layout order) of the scene the ``kind`` negative describes, or None.

    ``swap_attributes``: the two objects' attribute exchanged; ``swap_relation``: the objects in reverse
    order (a single object moved to the reversed position), which is what the reversed caption says.
    """
    attrs = [o.attrs() for o in scene.objects]
    if kind == "swap_attributes":
        target = _swap_target(scene)
        if target is None:
            return None
        i, j, attr = target
        k = ("size", "color", "shape").index(attr)
        a, b = list(attrs[i]), list(attrs[j])
        a[k], b[k] = b[k], a[k]
        attrs[i], attrs[j] = tuple(a), tuple(b)
        return scene.position, attrs
    if kind == "swap_relation":
        if scene.layout == "single":
            return {"left": "right", "middle": "left", "right": "left"}[scene.position], attrs
        return scene.position, attrs[::-1]
    raise ValueError(f"kind must be one of {SWAP_TYPES}, got {kind!r}")


def counterpart_scene(scene: Scene, kind: str, rng: random.Random) -> Scene | None:
    """A freshly laid out scene that the ``kind`` negative of ``scene`` truly describes, or None when it
    has no such negative or would show a held-out colour-shape pair."""
    found = counterpart_attrs(scene, kind)
    if found is None:
        return None
    position, attrs = found
    if {(c, s) for _, c, s in attrs} & set(HELDOUT_PAIRS):
        return None
    radii = [_radius(a[0]) for a in attrs]
    while True:
        if scene.layout == "single":
            third = POSITIONS.index(position) / 3
            pad = 0.04 if position == "middle" else 0.0
            x, y = _free(rng, radii[0], third + pad, third + 1 / 3 - pad), _free(rng, radii[0])
            a = attrs[0]
            return Scene("single", (Obj(shape=a[2], color=a[1], size=a[0], x=round(x, 4), y=round(y, 4)),), position)
        new = _layout(rng, scene.layout, attrs, radii)
        if new is not None:
            return new


def swap_training_negatives(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """(caption, type) swap negatives of a training scene: a random phrasing of each counterpart scene."""
    out = []
    for kind in SWAP_TYPES:
        other = counterpart_scene(scene, kind, rng)
        if other is not None:
            phrase = lambda k, o=other: object_phrase(o.objects[k], rng)  # noqa: E731
            out.append((rng.choice([lambda: canonical_caption(other), *_templates(other, phrase, rng)])(), kind))
    return out


def _replaced(scene: Scene, i: int, attr: str, value: str) -> Scene:
    objs = list(scene.objects)
    objs[i] = Obj(**{**asdict(objs[i]), attr: value})
    return Scene(scene.layout, tuple(objs), scene.position)


def training_negatives(scene: Scene, rng: random.Random) -> list[str]:
    """False captions for NegCLIP-style training: one object's shape (twice), colour or size replaced.

    Phrased with the same random templates as the true captions. They never name a held-out pair,
    and they are of other kinds than the test file's hard negatives (swaps, relation, count).
    """
    out = []
    banned = set(HELDOUT_PAIRS)
    # Shape twice: colour, size and position let a model tell most scenes apart, so shape is the
    # attribute a contrastive batch teaches least.
    for attr, values in (("shape", SHAPES), ("shape", SHAPES), ("color", tuple(COLORS)), ("size", tuple(SIZES))):
        i = rng.randrange(len(scene.objects))
        obj = scene.objects[i]
        options = [v for v in values if v != getattr(obj, attr)]
        rng.shuffle(options)
        for value in options:
            new = _replaced(scene, i, attr, value)
            attrs = [o.attrs() for o in new.objects]
            if len(set(attrs)) == len(attrs) and not {(c, s) for _, c, s in attrs} & banned:
                phrase = lambda k: object_phrase(new.objects[k], rng)  # noqa: E731
                out.append(rng.choice(_templates(new, phrase, rng))())
                break
    return out


def _differing_pair(objs: list[Obj]) -> tuple[int, int]:
    """The first pair of objects whose colours differ, else the first pair."""
    pairs = [(i, j) for i in range(len(objs)) for j in range(i + 1, len(objs))]
    return next(((i, j) for i, j in pairs if objs[i].color != objs[j].color), pairs[0])


# ----------------------------------------------------------------------------- rendering
def _polygon(cx: float, cy: float, r: float, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(cx + px * r, cy + py * r) for px, py in points]


def _star_points(n: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * n):
        rad = 1.0 if k % 2 == 0 else inner
        ang = -math.pi / 2 + k * math.pi / n
        out.append((rad * math.cos(ang), rad * math.sin(ang)))
    return out


_STAR = _star_points()
_TRIANGLE = [(0.0, -1.0), (0.93, 0.72), (-0.93, 0.72)]
_DIAMOND = [(0.0, -1.0), (0.72, 0.0), (0.0, 1.0), (-0.72, 0.0)]


def draw_object(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    """Draw one shape of radius ``r`` centred at ``(cx, cy)`` (pixels)."""
    box = lambda s: [cx - s * r, cy - s * r, cx + s * r, cy + s * r]  # noqa: E731
    if shape == "circle":
        draw.ellipse(box(0.92), fill=fill)
    elif shape == "square":
        draw.rectangle(box(0.8), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + 0.1 * r, r, _TRIANGLE), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(cx, cy, r, _DIAMOND), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy + 0.08 * r, 1.08 * r, _STAR), fill=fill)
    elif shape == "cross":
        t = 0.34 * r
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse(box(0.95), outline=fill, width=max(1, round(0.38 * r)))
    elif shape == "heart":
        s = 0.52 * r
        draw.ellipse([cx - 2 * s, cy - 0.9 * r, cx, cy - 0.9 * r + 2 * s], fill=fill)
        draw.ellipse([cx, cy - 0.9 * r, cx + 2 * s, cy - 0.9 * r + 2 * s], fill=fill)
        draw.polygon([(cx - 0.98 * r, cy - 0.25 * r), (cx + 0.98 * r, cy - 0.25 * r), (cx, cy + r)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """A neutral grey with a slight tint, a linear gradient and pixel noise: (side, side, 3) uint8.

    Computed once per output pixel (``side / SUPERSAMPLE`` cells) and repeated over each cell's
    SUPERSAMPLE x SUPERSAMPLE block, with the noise's standard deviation that averaging the block's
    independent draws gave (5 / SUPERSAMPLE): the reduced background has the same statistics, and the
    full-resolution version was ~60% of rendering an image.
    """
    base = (rng.uniform(75, 185) + rng.uniform(-12, 12, size=3)).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    cells = -(-side // SUPERSAMPLE)
    ramp = np.linspace(-1, 1, cells, dtype=np.float32)
    grad = np.float32(math.cos(angle)) * ramp[None, :] + np.float32(math.sin(angle)) * ramp[:, None]  # (cells, cells)
    img = rng.standard_normal((cells, cells, 3), dtype=np.float32) * np.float32(5 / SUPERSAMPLE)
    img += base
    img += np.float32(rng.uniform(0, 22)) * grad[:, :, None]
    small = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return small.repeat(SUPERSAMPLE, axis=0).repeat(SUPERSAMPLE, axis=1)[:side, :side]  # (side, side, 3)


def render(scene: Scene, image_size: int, seed: int | list[int]) -> Image.Image:
    """Draw the scene (supersampled, then reduced) with colour jitter from ``seed``."""
    rng = np.random.default_rng(seed)
    side = image_size * SUPERSAMPLE
    img = Image.fromarray(_background(rng, side))
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        fill = tuple(min(255, max(0, c + int(rng.integers(-14, 15)))) for c in COLORS[obj.color])
        r = _radius(obj.size) * side * rng.uniform(*RADIUS_JITTER)
        draw_object(draw, obj.shape, obj.x * side, obj.y * side, r, fill)
    return img.reduce(SUPERSAMPLE)


def object_box(obj: dict[str, Any] | Obj, image_size: int) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` in pixels of a box that holds the drawn object whatever its jitter: an
    object of a ``captions.jsonl`` ``objects`` entry (or an :class:`Obj`) in a ``image_size`` image."""
    o = obj if isinstance(obj, dict) else asdict(obj)
    half = _radius(o["size"]) * RADIUS_JITTER[1] * MAX_EXTENT * image_size
    cx, cy = o["x"] * image_size, o["y"] * image_size
    return cx - half, cy - half, cx + half, cy + half


def _render_job(job: tuple[Scene, int, list[int], str]) -> None:
    scene, size, seed, path = job
    write_png(path, np.asarray(render(scene, size, seed)))


# ----------------------------------------------------------------------------- generation
def sample_split(split: str, n: int, seed: int) -> list[Scene]:
    """The scenes of one split; test scenes have pairwise distinct description keys."""
    rng = random.Random(f"shapes-{seed}-{split}")
    scenes, seen = [], set()
    attempts = 0
    while len(scenes) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"cannot find {n} distinct {split} scenes; ask for fewer")
        scene = sample_scene(rng, heldout=split == "heldout")
        if split == "test":
            if scene.key() in seen:
                continue
            seen.add(scene.key())
        scenes.append(scene)
    return scenes


def _line(scene: Scene, image: str, rng: random.Random, negatives: bool, swaps: bool = False) -> dict[str, Any]:
    objects = [asdict(o) for o in scene.objects]
    extra = {"position": scene.position} if scene.position else {}
    line = {"image": image, "captions": captions(scene, rng), "layout": scene.layout, **extra, "objects": objects}
    if negatives:
        found = [(c, "replace_attribute") for c in training_negatives(scene, rng)]
        found += swap_training_negatives(scene, rng) if swaps else []
        line["negatives"] = [c for c, _ in found]
        line["negative_types"] = [t for _, t in found]
    return line


def zeroshot_templates() -> dict[str, list[str]]:
    """Prompt ensembles in the captions' own words for a single object: each class prompt is averaged
    over the other attributes and the three positions (48 prompts per class, the role CLIP's 80
    hand-written templates play for ImageNet)."""
    where = [POSITION_WORDS[p][0] for p in POSITIONS]
    return {"shape": [f"a {size} {color} {{}} {w}" for size in SIZES for color in COLORS for w in where],
            "color": [f"a {size} {{}} {shape} {w}" for size in SIZES for shape in SHAPES for w in where]}


def _meta(cfg: ShapesConfig) -> dict[str, Any]:
    return {
        "name": "shapes", "format_version": FORMAT_VERSION, "image_size": cfg.image_size, "seed": cfg.seed,
        "splits": {s: getattr(cfg, s) for s in SPLIT_IDS}, "train_swap_negatives": cfg.train_swap_negatives, "shapes": list(SHAPES), "colors": list(COLORS),
        "sizes": list(SIZES), "heldout_pairs": [list(p) for p in HELDOUT_PAIRS],
        "layouts": LAYOUT_WEIGHTS, "captions_per_image": CAPTIONS_PER_IMAGE, "zeroshot_templates": zeroshot_templates(),
    }


def generate(cfg: ShapesConfig, out: str | os.PathLike, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write the dataset to ``out`` and return its ``meta.json`` content.

    Scenes and captions are drawn in this process, images rendered by ``cfg.workers`` processes;
    ``meta.json`` is written last, so its presence marks a complete dataset.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    scenes = {split: sample_split(split, getattr(cfg, split), cfg.seed) for split in SPLIT_IDS}
    jobs = [job for split, split_id in SPLIT_IDS.items() for job in _image_jobs(cfg, out / split, split_id, scenes[split])]
    # The captions and manifests are written while the workers render (they need the scenes only).
    _render_all(jobs, cfg.workers, progress, during=lambda: [j for split in SPLIT_IDS for j in _write_manifests(cfg, out, split, scenes[split])])
    meta = _meta(cfg)
    atomic_write_json(out / "meta.json", meta)
    return meta


def _image_name(i: int) -> str:
    return f"images/{i:06d}.png"


def _image_jobs(cfg: ShapesConfig, root: Path, split_id: int, scenes: list[Scene]) -> list[tuple[Scene, int, list[int], str]]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    return [(scene, cfg.image_size, [cfg.seed, split_id, i], str(root / _image_name(i))) for i, scene in enumerate(scenes)]


def _write_manifests(cfg: ShapesConfig, out: Path, split: str, scenes: list[Scene]) -> list[tuple[Scene, int, list[int], str]]:
    """Write the split's manifest (and the test split's hard negatives and Winoground pairs); returns the
    render jobs of the Winoground counterpart images."""
    root = out / split
    rng = random.Random(f"captions-{cfg.seed}-{split}")
    swaps = cfg.train_swap_negatives and split == "train"
    lines = [_line(s, _image_name(i), rng, negatives=split in ("train", "val"), swaps=swaps) for i, s in enumerate(scenes)]
    atomic_write_text(root / "captions.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    if split != "test":
        return []
    negs = [{"image": x["image"], "positive": canonical_caption(s), "negatives": hard_negatives(s)} for x, s in zip(lines, scenes)]
    atomic_write_text(root / "hard_negatives.jsonl", "".join(json.dumps(x) + "\n" for x in negs))
    return _write_winoground(cfg, root, scenes, lines)


def _write_winoground(cfg: ShapesConfig, root: Path, scenes: list[Scene], lines: list[dict]) -> list[tuple[Scene, int, list[int], str]]:
    """``winoground.jsonl`` (image_0/caption_0 the test scene, image_1/caption_1 its counterpart and the
    swap negative) and the render jobs of the counterpart images."""
    (root / "winoground").mkdir(exist_ok=True)
    rng = random.Random(f"winoground-{cfg.seed}")
    items, jobs = [], []
    for i, (scene, line) in enumerate(zip(scenes, lines)):
        negatives = {n["type"]: n["caption"] for n in hard_negatives(scene)}
        for k, kind in enumerate(SWAP_TYPES):
            other = counterpart_scene(scene, kind, rng) if kind in negatives else None
            if other is None:
                continue
            image = f"winoground/{i:06d}_{k}.png"
            items.append({"image_0": line["image"], "caption_0": canonical_caption(scene), "image_1": image,
                          "caption_1": negatives[kind], "type": kind, "objects_1": [asdict(o) for o in other.objects],
                          "layout": other.layout, **({"position_1": other.position} if other.position else {})})
            jobs.append((other, cfg.image_size, [cfg.seed, WINOGROUND_SEED_ID, i, k], str(root / image)))
    atomic_write_text(root / "winoground.jsonl", "".join(json.dumps(x) + "\n" for x in items))
    return jobs


def _render_all(jobs: list, workers: int, progress: Callable[[int, int], None] | None,
                during: Callable[[], list] = list) -> None:
    """Render ``jobs`` with ``workers`` processes; ``during()`` runs in this process meanwhile and
    returns more jobs, rendered after them."""
    chunk = 256
    if workers == 1 or len(jobs) < 2 * chunk:
        jobs = jobs + during()
        _report(progress, 0, len(jobs))
        for i, job in enumerate(jobs, start=1):
            _render_job(job)
            if i % chunk == 0 or i == len(jobs):
                _report(progress, i, len(jobs))
        return
    with ProcessPoolExecutor(workers) as pool:
        first = pool.map(_render_job, jobs, chunksize=chunk)  # submitted now; runs while during() does
        more = during()
        total = len(jobs) + len(more)
        _report(progress, 0, total)
        rest = pool.map(_render_job, more, chunksize=chunk)
        for done, _ in enumerate(itertools.chain(first, rest), start=1):
            if done % chunk == 0 or done == total:
                _report(progress, done, total)


def _report(progress: Callable[[int, int], None] | None, done: int, total: int) -> None:
    if progress:
        progress(done, total)