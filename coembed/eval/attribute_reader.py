"""An attribute reader for ``shapes`` images: what each object of a known layout is, and where.

Generated images are judged without humans by reading their objects back. Given the layout a prompt
names, the reader answers for each *slot* of that layout (``single``: the object; ``horizontal``:
left, right; ``vertical``: top, bottom; ``row``: left, middle, right) the object's shape (8), colour
(8) and size (2), and, for the whole image, the layout (4: which also tells one object from two and
side-by-side from stacked) and, for one object, its third (left / middle / right).

It is a small CNN trained on *real* ``shapes`` images only (never on generated ones, which would let
a generator's habits leak into its judge). Its stride-2 stages bring any input down to a 4 x 4 map
that is flattened (not pooled) so the heads know where each feature is: that is what lets a "left
slot" head read the left object. One head per (layout, slot, attribute): a left-slot head of the
``horizontal`` layout never has to agree with the row's left slot. Its accuracy on real test images
is the ceiling of every correctness number it gives about generated ones.

Saved as a folder: ``model.safetensors`` + ``config.json`` (+ ``metrics.json``); no pickles.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from coembed.checkpoint import read_json, read_tensors, write_tensors
from coembed.data.synthetic.shapes import COLORS, POSITIONS, SHAPES, SIZES
from coembed.errors import CheckpointError, DataError
from coembed.io import atomic_write_json, read_jsonl

LAYOUTS = ("single", "horizontal", "vertical", "row")
SLOTS = {"single": ("object",), "horizontal": ("left", "right"), "vertical": ("top", "bottom"),
         "row": ("left", "middle", "right")}
ATTRIBUTES = {"shape": SHAPES, "color": tuple(COLORS), "size": tuple(SIZES)}
# Every (layout, slot index) pair owns one head per attribute, in this order.
HEAD_SLOTS = tuple((layout, i) for layout in LAYOUTS for i in range(len(SLOTS[layout])))
READER_KIND = "shapes_attribute_reader"
IGNORE = -1  # target of a head the image's layout does not use


# ----------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class SceneTarget:
    """What an image should show: its layout, its single object's third, its objects in slot order.

    Attributes:
        layout: one of :data:`LAYOUTS`.
        objects: (shape, colour, size) per slot, in the layout's slot order (left to right, top to
            bottom), as ``captions.jsonl`` lists them.
        position: ``left`` / ``middle`` / ``right`` for ``single``, else ``""``.
    """

    layout: str
    objects: tuple[tuple[str, str, str], ...]
    position: str = ""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if len(self.objects) != len(SLOTS[self.layout]):
            raise ValueError(f"objects: layout {self.layout!r} has {len(SLOTS[self.layout])} objects, got {len(self.objects)}")
        for obj in self.objects:
            for (name, values), value in zip(ATTRIBUTES.items(), obj):
                if value not in values:
                    raise ValueError(f"objects: {name} must be one of {values}, got {value!r}")
        if (self.layout == "single") != (self.position in POSITIONS):
            raise ValueError(f"position must be one of {POSITIONS} for a single object and empty otherwise, got {self.position!r}")

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> SceneTarget:
        """The target of one ``captions.jsonl`` line of a ``shapes`` split (its ``layout`` and ``objects``)."""
        try:
            objects = tuple((o["shape"], o["color"], o["size"]) for o in line["objects"])
            return cls(line["layout"], objects, line.get("position", ""))
        except (KeyError, TypeError) as e:
            raise DataError(f"a shapes captions.jsonl line needs 'layout' and 'objects' with shape/color/size: missing {e}") from None

    def labels(self) -> list[int]:
        """Class ids: layout, position, then (shape, colour, size) of every head slot (IGNORE if unused)."""
        out = [LAYOUTS.index(self.layout), POSITIONS.index(self.position) if self.position else IGNORE]
        for layout, i in HEAD_SLOTS:
            obj = self.objects[i] if layout == self.layout else None
            out += [values.index(obj[k]) if obj else IGNORE for k, values in enumerate(ATTRIBUTES.values())]
        return out


# ----------------------------------------------------------------------------- model
@dataclass(kw_only=True)
class ReaderConfig:
    """The reader network.

    Attributes:
        image_size: side the reader works at; other sizes are resized to it (area/bilinear).
        width: channels of the stem (2x and 4x in the later stages; a multiple of 8).
        hidden: width of the MLP between the flattened map and the heads.
    """

    image_size: int = 64
    width: int = 16
    hidden: int = 256

    def __post_init__(self) -> None:
        for name in ("image_size", "width", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.image_size < 32 or self.image_size & (self.image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 32, got {self.image_size}")
        if self.width % 8:
            raise ValueError(f"width must be a multiple of 8 (GroupNorm groups), got {self.width}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": READER_KIND, **asdict(self)}


def _conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.GELU()]


class AttributeReader(nn.Module):
    """CNN: [0, 1] images (B, 3, H, W) -> logits of every head, concatenated (B, n_logits).

    A stem brings the input to 32 x 32 (stride image_size / 32: a 64 px reader still sees every pixel,
    through a strided 3 x 3 conv), then three stride-2 stages reach 4 x 4, with a second conv at the
    8 x 8 and 4 x 4 resolutions where it is cheap. One thread trains it at ~0.1-0.2 s per 64 images.
    """

    config_class = ReaderConfig

    def __init__(self, config: ReaderConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        layers = _conv(3, w, config.image_size // 32)  # (B, w, 32, 32)
        for cin, cout, extra in ((w, 2 * w, True), (2 * w, 4 * w, True), (4 * w, 4 * w, True)):
            layers += _conv(cin, cout, 2) + (_conv(cout, cout, 1) if extra else [])  # 16, 8, 4 px
        self.features = nn.Sequential(*layers)  # (B, 4w, 4, 4)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, config.hidden), nn.GELU())
        self.sizes = [len(LAYOUTS), len(POSITIONS)] + [len(v) for _ in HEAD_SLOTS for v in ATTRIBUTES.values()]
        self.heads = nn.Linear(config.hidden, sum(self.sizes))

    def prepare(self, images: Tensor) -> Tensor:
        """[0, 1] images at any square size -> the reader's size, centred around 0."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            mode = "area" if images.shape[-1] > size else "bilinear"
            images = F.interpolate(images.float(), size=(size, size), mode=mode)
        return (images.float() - 0.5) / 0.25

    def forward(self, images: Tensor) -> Tensor:
        return self.heads(self.mlp(self.features(self.prepare(images))))

    def split_logits(self, logits: Tensor) -> list[Tensor]:
        """Per-head logits, in :meth:`SceneTarget.labels` order."""
        return list(logits.split(self.sizes, dim=-1))


def reader_loss(head_logits: Sequence[Tensor], labels: Tensor) -> Tensor:
    """Sum over heads of the cross-entropy of the heads each image's layout uses.

    Args:
        head_logits: per head, (B, classes) logits.
        labels: (B, heads) class ids, IGNORE where a head does not apply.
    """
    total = head_logits[0].new_zeros(())
    for k, logits in enumerate(head_logits):
        if (labels[:, k] != IGNORE).any():
            total = total + F.cross_entropy(logits, labels[:, k], ignore_index=IGNORE)
    return total


# ----------------------------------------------------------------------------- reading and scoring
@dataclass(frozen=True)
class Reading:
    """What the reader sees in one image, read for a given layout."""

    layout: str  # the layout head's answer (may differ from the one read for)
    position: str  # the single-object third head's answer
    objects: tuple[tuple[str, str, str], ...]  # (shape, colour, size) per slot of the layout read for


@torch.no_grad()
def read_images(reader: AttributeReader, images: Tensor, layouts: Sequence[str], *, batch_size: int = 256) -> list[Reading]:
    """Read each image's objects for the layout given for it.

    Args:
        images: (N, 3, H, W) in [0, 1].
        layouts: N layouts, e.g. the layouts the prompts name.
    """
    if len(layouts) != images.shape[0]:
        raise ValueError(f"layouts: need one per image ({images.shape[0]}), got {len(layouts)}")
    reader.eval()
    preds = torch.cat([_argmax_heads(reader, reader(images[i : i + batch_size]))
                       for i in range(0, len(images), batch_size)])  # (N, heads)
    return [_reading(row.tolist(), layout) for row, layout in zip(preds, layouts)]


def _argmax_heads(reader: AttributeReader, logits: Tensor) -> Tensor:
    return torch.stack([h.argmax(dim=-1) for h in reader.split_logits(logits)], dim=1)  # (B, heads)


def _reading(pred: list[int], layout: str) -> Reading:
    objects = []
    for k, (head_layout, i) in enumerate(HEAD_SLOTS):
        if head_layout == layout:
            ids = pred[2 + 3 * k : 5 + 3 * k]
            objects.append(tuple(values[j] for values, j in zip(ATTRIBUTES.values(), ids)))
    return Reading(LAYOUTS[pred[0]], POSITIONS[pred[1]], tuple(objects))


def _matches(read: Sequence[tuple[str, str, str]], want: Sequence[tuple[str, str, str]]) -> int:
    return sum(a == b for r, w in zip(read, want) for a, b in zip(r, w))


def position_correct(reading: Reading, target: SceneTarget) -> bool:
    """Is the arrangement the target's?

    One object: the third head agrees. Several: the layout head names the target layout (side by
    side vs stacked vs three) and the slots read agree with the target's order strictly better than
    with any other order of the same objects (so "red left of blue" drawn as "blue left of red" is
    wrong even when every object is drawn right).
    """
    if target.layout == "single":
        return reading.position == target.position and reading.layout == "single"
    if reading.layout != target.layout:
        return False
    right = _matches(reading.objects, target.objects)
    others = [p for p in itertools.permutations(target.objects) if p != target.objects]
    return all(right > _matches(reading.objects, p) for p in others)


def object_scores(reading: Reading, target: SceneTarget) -> dict[str, list[bool]]:
    """Per object of the target: shape, colour, size, and shape-and-colour correct."""
    out: dict[str, list[bool]] = {"shape": [], "color": [], "size": [], "shape_color": []}
    for (shape, color, size), (ws, wc, wz) in zip(reading.objects, target.objects):
        out["shape"].append(shape == ws)
        out["color"].append(color == wc)
        out["size"].append(size == wz)
        out["shape_color"].append(shape == ws and color == wc)
    return out


def attribute_correctness(reader: AttributeReader, images: Tensor, targets: Sequence[SceneTarget]) -> dict[str, Any]:
    """Per layout: fraction of objects with the right shape / colour / size / shape and colour, fraction
    of images with the right position and with everything right; plus ``overall`` over all images.

    Args:
        images: (N, 3, H, W) in [0, 1], image i drawn for ``targets[i]``.
    """
    readings = read_images(reader, images, [t.layout for t in targets])
    groups: dict[str, dict[str, list[bool]]] = {}
    for reading, target in zip(readings, targets):
        for key in (target.layout, "overall"):
            g = groups.setdefault(key, {"shape": [], "color": [], "size": [], "shape_color": [], "position": [], "all": []})
            scores = object_scores(reading, target)
            for name, values in scores.items():
                g[name] += values
            pos = position_correct(reading, target)
            g["position"].append(pos)
            g["all"].append(pos and all(all(v) for v in scores.values()))
    order = [k for k in (*LAYOUTS, "overall") if k in groups]
    return {k: {"n": len(groups[k]["all"]), **{m: float(np.mean(v)) for m, v in groups[k].items()}} for k in order}


# ----------------------------------------------------------------------------- data
def load_split(root: str | os.PathLike, image_size: int | None = None, limit: int | None = None) -> tuple[Tensor, list[SceneTarget]]:
    """Images (N, 3, S, S) uint8 and targets of a ``shapes`` split folder (its captions.jsonl).

    Args:
        image_size: resize to this side (box filter) if the files differ; None keeps them.
        limit: read only the first ``limit`` lines.
    """
    root = Path(root)
    manifest = root / "captions.jsonl"
    if not manifest.is_file():
        raise DataError(f"{root} has no captions.jsonl: expected a split of `coembed data shapes`")
    images, targets = [], []
    for _, line in read_jsonl(manifest):
        if limit is not None and len(targets) >= limit:
            break
        targets.append(SceneTarget.from_line(line))
        with Image.open(root / line["image"]) as img:
            img = img.convert("RGB")
            if image_size is not None and img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.Resampling.BOX)
            images.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1))  # (3, S, S)
    if not targets:
        raise DataError(f"{manifest} is empty")
    return torch.stack(images), targets


def to_unit(images: Tensor) -> Tensor:
    """uint8 (N, 3, S, S) -> float [0, 1]."""
    return images.float() / 255.0


# ----------------------------------------------------------------------------- training
@dataclass(kw_only=True)
class ReaderTraining:
    """How the reader is trained.

    Attributes:
        steps: optimiser steps.
        batch_size: images per step.
        lr: peak AdamW learning rate (linear warm-up over 5% of the steps, cosine decay).
        weight_decay: AdamW weight decay.
        noise: largest std of the Gaussian pixel noise added to training images (each image draws its
            own std in [0, noise]), so that a slightly noisy sample is still read.
        seed: seeds initialisation, batches and noise.
    """

    steps: int = 3000
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    noise: float = 0.06
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "weight_decay", "noise"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0")


def _lr_factor(step: int, total: int) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def train_reader(images: Tensor, targets: Sequence[SceneTarget], config: ReaderConfig, training: ReaderTraining,
                 progress: Callable[[int, int, float], None] | None = None) -> AttributeReader:
    """Train a reader on real images.

    Args:
        images: (N, 3, S, S) uint8 training images.
        targets: their scene targets.
        progress: called as ``progress(step, total, loss)`` after every step.
    """
    torch.manual_seed(training.seed)
    gen = torch.Generator().manual_seed(training.seed)
    reader = AttributeReader(config)
    labels = torch.tensor([t.labels() for t in targets])  # (N, heads)
    opt = torch.optim.AdamW(reader.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, training.steps))
    order, cursor = torch.randperm(len(targets), generator=gen), 0
    reader.train()
    for step in range(training.steps):
        if cursor + training.batch_size > len(order):
            order, cursor = torch.randperm(len(targets), generator=gen), 0
        idx = order[cursor : cursor + training.batch_size]
        cursor += training.batch_size
        x = to_unit(images[idx])
        sigma = torch.rand(len(idx), 1, 1, 1, generator=gen) * training.noise
        x = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        loss = reader_loss(reader.split_logits(reader(x)), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(step + 1, training.steps, float(loss))
    return reader.eval()


# ----------------------------------------------------------------------------- files
def save_reader(reader: AttributeReader, folder: str | os.PathLike, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ ``metrics.json``) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(folder / "model.safetensors", reader.state_dict(), metadata={"format": READER_KIND})
    atomic_write_json(folder / "config.json", reader.config.to_dict())
    if metrics is not None:
        atomic_write_json(folder / "metrics.json", metrics)
    return folder


def load_reader(folder: str | os.PathLike) -> AttributeReader:
    """A reader saved by :func:`save_reader` (strict: every tensor must match)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"reader {folder} does not exist (train one with `coembed train-reader`)")
    config = read_json(folder / "config.json")
    if config.pop("kind", None) != READER_KIND:
        raise CheckpointError(f"{folder} is not an attribute reader (config.json kind is not {READER_KIND!r})")
    try:
        reader = AttributeReader(ReaderConfig(**config))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    state = read_tensors(folder / "model.safetensors")
    try:
        reader.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{folder}: weights do not match config.json: {e}") from None
    return reader.eval()


def reader_report(metrics: dict[str, Any]) -> str:
    """A small table: per layout, accuracy of each attribute."""
    names = ("shape", "color", "size", "shape_color", "position", "all")
    lines = [f"{'layout':<11}{'n':>6}" + "".join(f"{n:>13}" for n in names)]
    for layout, m in metrics.items():
        lines.append(f"{layout:<11}{m['n']:>6}" + "".join(f"{m[n]:>13.3f}" for n in names))
    return "\n".join(lines)

