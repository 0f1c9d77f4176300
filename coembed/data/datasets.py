"""Image-text datasets as users bring them: a folder of images plus ``captions.jsonl`` or a CSV.

Manifest formats (paths are relative to the manifest's folder unless absolute):

- ``captions.jsonl``: one JSON object per line, ``{"image": "rel/path.png", "captions": ["...", ...]}``
  (or ``"caption": "..."``); any other keys are kept as :attr:`Sample.meta`.
- an OpenCLIP-style CSV/TSV with a ``filepath`` and a ``title`` column; rows naming the same image
  are grouped into one sample with several captions.

Bad lines (invalid JSON or UTF-8, missing or mistyped fields, empty captions, missing image files)
are skipped and counted in a :class:`SkipReport`; images that fail to decode are skipped the same way
when a batch is loaded. A manifest with no usable line is an error naming the file and the reasons.

What happens to hostile text, line by line (both formats):

- a line (JSONL) or row (CSV) that is not UTF-8 is skipped as ``invalid UTF-8`` naming ``file:line``
  (not decoded with replacement characters: a caption made of U+FFFD would train on noise);
- a UTF-8 byte-order mark at the start of the file is ignored; CRLF line ends are read like LF;
- captions are cleaned by :func:`clean_caption`: control characters (NUL included) become spaces,
  whitespace runs collapse, lone surrogates (``"\ud800"`` escapes in JSON) become U+FFFD; a caption
  with no visible character left (only whitespace, control or format characters such as U+200B) is
  dropped, and a sample with no caption left is skipped as ``empty caption``;
- lines naming an image seen before are merged into that image's sample (captions appended in
  order, exact duplicates dropped, the first line's other fields kept) and counted in
  :attr:`SkipReport.merged` and :attr:`SkipReport.duplicate_captions`;
- a CSV the ``csv`` module cannot parse (an unclosed quote) is a :class:`DataError` naming the line,
  not a silently swallowed rest of the file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from coembed.errors import DataError
from coembed.transforms import ImageLoadError, ImageTransform, load_image, os_error_reason

MANIFEST_JSONL = "captions.jsonl"
CSV_SUFFIXES = (".csv", ".tsv")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
CSV_IMAGE_COLUMN, CSV_CAPTION_COLUMN = "filepath", "title"


# ----------------------------------------------------------------------------- samples and skips
@dataclass
class Sample:
    """One image and its captions.

    Attributes:
        image: path of the image, relative to the dataset folder (or absolute).
        captions: one or more non-empty captions.
        meta: the manifest line's other fields (for `shapes`: ``objects``, ``layout``, ...).
    """

    image: str
    captions: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)


class SkippedSample(NamedTuple):
    """A sample left out, and why (``"category: detail"``)."""

    name: str
    reason: str


def skip_category(reason: str) -> str:
    """The part of a reason before the first colon: ``"not an image: ..."`` -> ``"not an image"``."""
    return reason.split(":", 1)[0].strip()


@dataclass
class SkipReport:
    """Counts of skipped samples by reason category, with the first few names for the user.

    Attributes:
        by_reason: category -> count.
        examples: the first ``max_examples`` skipped ``(name, full reason)`` pairs.
        max_examples: how many examples are kept.
    """

    by_reason: dict[str, int] = field(default_factory=dict)
    examples: list[tuple[str, str]] = field(default_factory=list)
    max_examples: int = 20
    merged: int = 0  # manifest lines merged into an earlier sample of the same image (not skips)
    duplicate_captions: int = 0  # captions dropped because the same image already had that exact caption

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def add(self, name: str, reason: str) -> None:
        category = skip_category(reason)
        self.by_reason[category] = self.by_reason.get(category, 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append((name, reason))

    def merge(self, other: SkipReport) -> None:
        for category, count in other.by_reason.items():
            self.by_reason[category] = self.by_reason.get(category, 0) + count
        room = self.max_examples - len(self.examples)
        self.examples.extend(other.examples[: max(room, 0)])
        self.merged += other.merged
        self.duplicate_captions += other.duplicate_captions

    def summary(self, max_examples: int = 5) -> str:
        """One line: ``skipped 3 samples (missing file 2, empty caption 1): a.png (missing file), ...``."""
        if not self.total:
            return "skipped 0 samples"
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.by_reason.items(), key=lambda kv: -kv[1]))
        shown = ", ".join(f"{name} ({reason})" for name, reason in self.examples[:max_examples])
        more = f", and {self.total - min(max_examples, len(self.examples))} more" if self.total > max_examples else ""
        noun = "sample" if self.total == 1 else "samples"
        return f"skipped {self.total} {noun} ({counts}): {shown}{more}"


# ----------------------------------------------------------------------------- manifests
def find_manifest(folder: Path) -> Path | None:
    """``captions.jsonl`` if present, else the folder's single CSV/TSV (``captions.csv`` if several)."""
    jsonl = folder / MANIFEST_JSONL
    if jsonl.is_file():
        return jsonl
    tables = sorted(p for p in folder.iterdir() if p.suffix.lower() in CSV_SUFFIXES and p.is_file())
    if len(tables) > 1:
        preferred = [p for p in tables if p.stem == "captions"]
        if len(preferred) != 1:
            names = ", ".join(p.name for p in tables)
            raise DataError(f"{folder} holds several CSV files ({names}); keep one or name it captions.csv")
        return preferred[0]
    return tables[0] if tables else None


def read_samples(root: str | os.PathLike) -> tuple[list[Sample], SkipReport]:
    """Read a dataset folder's manifest into samples whose image files exist.

    Raises:
        DataError: the folder does not exist, has no manifest, or has no usable sample.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    manifest = find_manifest(root)
    if manifest is None:
        raise DataError(f"{root} has no {MANIFEST_JSONL} and no CSV file with '{CSV_IMAGE_COLUMN}' and '{CSV_CAPTION_COLUMN}' columns")
    report = SkipReport()
    entries = _jsonl_entries(manifest, report) if manifest.suffix == ".jsonl" else _csv_entries(manifest, report)
    samples = _existing(root, _group(entries, report), report)
    if not samples:
        empty = not report.total and not manifest.read_bytes().strip()
        raise DataError(f"{manifest} is empty" if empty else f"no usable samples in {manifest}: {report.summary()}")
    return samples, report


def _jsonl_entries(path: Path, report: SkipReport) -> Iterable[tuple[str, list[str], dict[str, Any]]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path.name}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a BOM only ever starts the file
            except UnicodeDecodeError as e:
                report.add(where, f"invalid UTF-8: byte {e.start} of the line is not UTF-8 text")
                continue
            if not line.strip():
                continue
            entry = _parse_jsonl_line(line, where, report)
            if entry is not None:
                yield entry


def _parse_jsonl_line(line: str, where: str, report: SkipReport) -> tuple[str, list[str], dict[str, Any]] | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        report.add(where, f"invalid JSON: {e.msg} (column {e.colno})")
        return None
    except RecursionError:  # json's C decoder recurses per nesting level
        report.add(where, "invalid JSON: nested too deeply")
        return None
    if not isinstance(obj, dict):
        report.add(where, f"wrong type: expected a JSON object, got {type(obj).__name__}")
        return None
    image = obj.pop("image", None)
    if not isinstance(image, str) or not image.strip():
        report.add(where, "missing field: 'image' must be a non-empty string" if image is None
                   else f"wrong type: 'image' must be a non-empty string, got {image!r:.60}")
        return None
    captions = _captions_field(obj, where, report)
    return None if captions is None else (image.strip(), captions, obj)


def _captions_field(obj: dict[str, Any], where: str, report: SkipReport) -> list[str] | None:
    raw = obj.pop("captions", None)
    single = obj.pop("caption", None)
    if raw is None and single is None:
        report.add(where, "missing field: 'captions' (a list of strings) or 'caption' (a string)")
        return None
    for name, value in (("captions", raw), ("caption", single)):
        if value is None or isinstance(value, str) or (name == "captions" and isinstance(value, list)):
            continue
        report.add(where, f"wrong type: '{name}' must be {'a list of strings' if name == 'captions' else 'a string'}, "
                          f"got {type(value).__name__} {value!r:.40}")
        return None
    values = ([raw] if isinstance(raw, str) else raw or []) + ([single] if single is not None else [])
    bad = next((c for c in values if not isinstance(c, str)), None)
    if bad is not None:
        report.add(where, f"wrong type: 'captions' must be a list of strings, it holds {type(bad).__name__} {bad!r:.40}")
        return None
    return values


# Bytes that are not UTF-8 survive decoding with errors="surrogateescape" as U+DC80..U+DCFF, so a
# row holding them can be skipped alone (valid UTF-8 never decodes to a surrogate).
_ESCAPED_BYTES = re.compile("[\udc80-\udcff]")


def _csv_entries(path: Path, report: SkipReport) -> Iterable[tuple[str, list[str], dict[str, Any]]]:
    text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    if not text.strip():
        raise DataError(f"{path} is empty; it needs a header row with '{CSV_IMAGE_COLUMN}' and '{CSV_CAPTION_COLUMN}' columns")
    header = text.split("\n", 1)[0]
    delimiter = "\t" if header.count("\t") > header.count(",") else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter, strict=True)
    missing = {CSV_IMAGE_COLUMN, CSV_CAPTION_COLUMN} - set(_csv_rows(path, reader, lambda: reader.fieldnames) or [])
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}; found {reader.fieldnames}")
    while (row := _csv_rows(path, reader, lambda: next(reader, None))) is not None:
        where = f"{path.name}:{reader.line_num}"
        image, caption = row.get(CSV_IMAGE_COLUMN), row.get(CSV_CAPTION_COLUMN)
        if any(_ESCAPED_BYTES.search(v) for v in (image or "", caption or "")):
            report.add(where, "invalid UTF-8: the row is not UTF-8 text")
        elif not image or not image.strip():
            report.add(where, f"missing field: empty '{CSV_IMAGE_COLUMN}'")
        else:
            yield image.strip(), [caption or ""], {}


def _csv_rows(path: Path, reader: csv.DictReader, read: Callable[[], Any]) -> Any:
    """``read()`` with no limit on a field's size (a long caption is not an error), and the ``csv``
    module's errors (an unclosed quote) as a DataError naming the line: the reader cannot resume
    after them, and going on would swallow the rest of the file into one field."""
    limit, start = csv.field_size_limit(), reader.line_num + 1
    csv.field_size_limit(1 << 30)
    try:
        return read()
    except csv.Error as e:
        raise DataError(f"{path}:{start}: malformed CSV ({e}); check the quotes of the row starting at line {start}") from None
    finally:
        csv.field_size_limit(limit)


def _group(entries: Iterable[tuple[str, list[str], dict[str, Any]]], report: SkipReport) -> list[tuple[str, list[str], dict[str, Any]]]:
    """Merge entries naming the same image (first-seen order; the first entry's meta), counting the
    merged entries in ``report.merged``."""
    grouped: dict[str, tuple[str, list[str], dict[str, Any]]] = {}
    for image, captions, meta in entries:
        if image in grouped:
            grouped[image][1].extend(captions)
            report.merged += 1
        else:
            grouped[image] = (image, list(captions), meta)
    return list(grouped.values())


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 and C1 controls except tab and newline
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_caption(text: str) -> str:
    """``text`` with control characters as spaces, whitespace collapsed and lone surrogates as
    U+FFFD (they cannot be written as UTF-8); ``""`` when no visible character is left."""
    text = " ".join(_SURROGATE.sub("\ufffd", _CONTROL.sub(" ", text)).split())
    return text if any(unicodedata.category(ch) not in ("Cf", "Zs") for ch in text) else ""


def _captions(captions: list[str], report: SkipReport) -> tuple[str, ...]:
    cleaned = [c for c in map(clean_caption, captions) if c]
    kept = tuple(dict.fromkeys(cleaned))
    report.duplicate_captions += len(cleaned) - len(kept)
    return kept


def _existing(root: Path, entries: list[tuple[str, list[str], dict[str, Any]]], report: SkipReport) -> list[Sample]:
    samples = []
    for image, captions, meta in entries:
        kept = _captions(captions, report)
        if not kept:
            report.add(image, "empty caption: no non-blank caption")
        elif (problem := _file_problem(root / image)) is not None:
            report.add(image, problem)
        else:
            samples.append(Sample(image, kept, meta))
    return samples


def _file_problem(path: Path) -> str | None:
    """None for a regular file, else why the manifest line is skipped (in load_image's categories:
    a dangling symlink or a folder named ``x.jpg`` is not a "missing file")."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:  # also symlink loops, over-long or NUL-containing names
        missing = isinstance(e, FileNotFoundError) and not os.path.islink(path)
        return "missing file: no such image file" if missing else os_error_reason(path, e)
    if not stat.S_ISREG(st.st_mode):
        return f"not an image: path is {'a directory' if stat.S_ISDIR(st.st_mode) else 'not a regular file'}"
    return None


def iter_images(root: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of the image files under ``root`` (recursive, sorted)."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = Path(folder).relative_to(root)
        found.extend((rel / name).as_posix() for name in files if Path(name).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found)


# ----------------------------------------------------------------------------- torch datasets
def choose_caption(captions: Sequence[str], mode: str, *, seed: int, epoch: int, index: int) -> str:
    """The first caption, or with ``mode="random"`` one drawn by a generator seeded with
    ``(seed, epoch, index)`` only, so worker count and resumption do not change it."""
    if mode == "first" or len(captions) == 1:
        return captions[0]
    rng = random.Random((seed * 1_000_003 + epoch) * 10_000_019 + index)
    return captions[rng.randrange(len(captions))]


def candidate_negatives(meta: dict[str, Any], negative_types: set[str] | None = None) -> list[str]:
    """The usable hard-negative captions of a sample's ``meta["negatives"]``.

    With ``negative_types``, those whose ``meta["negative_types"]`` entry is one of them (a sample that
    has none of those kinds keeps all of its negatives)."""
    negatives = meta.get("negatives")
    if not isinstance(negatives, list):
        return []
    types = meta.get("negative_types")
    if negative_types and isinstance(types, list) and len(types) == len(negatives):
        chosen = [n for n, t in zip(negatives, types) if t in negative_types]
        negatives = chosen or negatives
    return [n for n in negatives if isinstance(n, str) and n.strip()]


def choose_negative(negatives: Sequence[str], *, seed: int, epoch: int, index: int) -> str | None:
    """One of ``negatives`` (None if empty), seeded like :func:`choose_caption` but independently of it."""
    if not negatives:
        return None
    rng = random.Random(((seed * 1_000_003 + epoch) * 10_000_019 + index) * 7 + 1)
    return negatives[rng.randrange(len(negatives))]


def _load(root: Path, relpath: str, transform: ImageTransform) -> tuple[torch.Tensor | None, str | None]:
    try:
        return transform(load_image(root / relpath)), None
    except ImageLoadError as e:
        return None, e.reason


class ImageTextDataset(Dataset):
    """Items ``(index, image tensor or None, caption, image relpath, skip reason or None)`` for training,
    plus a hard-negative caption (or None) with ``with_negatives``.

    With ``caption_mode="random"`` the caption of sample ``i`` in epoch ``e`` is drawn by a generator
    seeded with ``(seed, e, i)`` only, so worker count and resumption do not change it.
    """

    def __init__(self, root: str | os.PathLike, samples: Sequence[Sample], transform: ImageTransform, *,
                 caption_mode: str = "random", seed: int = 0, with_negatives: bool = False,
                 negative_types: Sequence[str] | None = None) -> None:
        if caption_mode not in ("random", "first"):
            raise ValueError(f"caption_mode must be 'random' or 'first', got {caption_mode!r}")
        self.root, self.samples, self.transform = Path(root), list(samples), transform
        self.with_negatives = with_negatives
        self.negative_types = set(negative_types) if negative_types else None
        self.caption_mode, self.seed, self.epoch = caption_mode, seed, 0

        self._cache: torch.Tensor | None = None  # (N, S, S, 3) uint8 after preload()
        self._cache_errors: dict[int, str] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def preload(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Decode every image once into an in-memory uint8 cache; returns the cache size in bytes.

        Images that fail are remembered with their reason and still reported per batch, as without
        the cache. Items from the cache equal freshly decoded ones bit for bit.
        """
        size = self.transform.image_size
        cache = torch.zeros((len(self.samples), size, size, 3), dtype=torch.uint8)
        for i, sample in enumerate(self.samples):
            try:
                cache[i] = torch.from_numpy(self.transform.pixels(load_image(self.root / sample.image)))
            except ImageLoadError as e:
                self._cache_errors[i] = e.reason
            if progress and ((i + 1) % 1000 == 0 or i + 1 == len(self.samples)):
                progress(i + 1, len(self.samples))
        self._cache = cache
        return cache.numel()

    def __len__(self) -> int:
        return len(self.samples)

    def caption(self, index: int) -> str:
        return choose_caption(self.samples[index].captions, self.caption_mode, seed=self.seed, epoch=self.epoch, index=index)

    def candidate_negatives(self, index: int) -> list[str]:
        """The usable hard-negative captions of sample ``index`` that :meth:`negative` draws from.

        With ``negative_types``, those whose ``negative_types`` entry is one of them (a sample that has
        none of those kinds keeps all of its negatives)."""
        return candidate_negatives(self.samples[index].meta, self.negative_types)

    def negative(self, index: int) -> str | None:
        """A hard-negative caption from :meth:`candidate_negatives` (seeded like :meth:`caption`)."""
        return choose_negative(self.candidate_negatives(index), seed=self.seed, epoch=self.epoch, index=index)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str, str, str | None]:
        name = self.samples[index].image
        if self._cache is None:
            image, reason = _load(self.root, name, self.transform)
        elif index in self._cache_errors:
            image, reason = None, self._cache_errors[index]
        else:
            image, reason = self.transform.normalize(self._cache[index]), None
        item = (index, image, self.caption(index), name, reason)
        return (*item, self.negative(index)) if self.with_negatives else item


@dataclass
class ImageTextBatch:
    """A collated training batch; ``images`` is None when no image in it loaded."""

    images: torch.Tensor | None  # (B, 3, S, S)
    captions: list[str]  # (B,) one per loaded image
    indices: torch.Tensor  # (B,) dataset indices of the loaded images
    skipped: list[SkippedSample]
    negatives: list[str] = field(default_factory=list)  # hard-negative captions of the loaded images, if any


def collate_image_text(items: list[tuple]) -> ImageTextBatch:
    """Collate ``(index, image, caption, name, reason[, negative])`` items, dropping failed images."""
    good = [item for item in items if item[1] is not None]
    skipped = [SkippedSample(item[3], item[4]) for item in items if item[1] is None]
    images = torch.stack([item[1] for item in good]) if good else None
    negatives = [item[5] for item in good if len(item) > 5 and item[5] is not None]
    return ImageTextBatch(images, [item[2] for item in good], torch.tensor([item[0] for item in good], dtype=torch.long),
                          skipped, negatives)


class ImageFolderDataset(Dataset):
    """Items ``(index, image tensor or None, relpath, skip reason or None)`` for embedding."""

    def __init__(self, root: str | os.PathLike, relpaths: Sequence[str], transform: ImageTransform) -> None:
        self.root, self.relpaths, self.transform = Path(root), list(relpaths), transform

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str, str | None]:
        image, reason = _load(self.root, self.relpaths[index], self.transform)
        return index, image, self.relpaths[index], reason


@dataclass
class ImageBatch:
    """A collated batch of images; ``images`` is None when none loaded."""

    images: torch.Tensor | None  # (B, 3, S, S)
    indices: torch.Tensor  # (B,) positions in the relpath list
    skipped: list[SkippedSample]  # (relpath, reason)


def collate_images(items: list[tuple[int, torch.Tensor | None, str, str | None]]) -> ImageBatch:
    good = [(i, img) for i, img, _, _ in items if img is not None]
    skipped = [SkippedSample(name, reason) for _, img, name, reason in items if img is None]
    images = torch.stack([img for _, img in good]) if good else None
    return ImageBatch(images, torch.tensor([i for i, _ in good], dtype=torch.long), skipped)
