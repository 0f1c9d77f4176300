"""ALIGN-style cleaning of an image-text dataset folder (``coembed data filter``).

ALIGN (Jia et al., 2021) keeps most of its noisy alt-texts and applies only simple frequency-based
filters. The rules here, in the order they are checked:

Per caption (a dropped caption leaves the image's other captions):

1. ``no letters``: a caption without a single letter ("12345", "!!!", "2019-05-01").
2. ``junk pattern``: a caption matching a junk pattern: the defaults (:data:`DEFAULT_JUNK_PATTERNS`:
   file names such as "IMG_1234.jpg" or "DSC01234", URLs, "click here" / "stock photo" style
   boilerplate) plus the user's own regular expressions.
3. ``too few words``: fewer than ``min_words`` words (ALIGN drops alt-texts under 3 unigrams).
4. ``frequent text``: a caption whose normalised text (casefolded, punctuation removed) is shared by
   more than ``max_images_per_text`` distinct images of the input; ALIGN drops alt-texts shared by
   more than 10 images, boilerplate such as "image" or "photo". Counted over the whole input
   before any other rule.

Per image (the image and all its captions are dropped):

5. ``no caption left``: every caption was dropped by rules 1-4.
6. ``unreadable image``: the header cannot be read (not an image, empty, too many pixels for the
   decompression-bomb limit that :func:`coembed.transforms.load_image` applies).
7. ``image too small``: the shorter side is under ``min_image_side`` pixels (ALIGN: 200).
8. ``extreme aspect ratio``: the longer side over the shorter exceeds ``max_aspect`` (ALIGN: 3).

Image sizes come from the file header (Pillow opens lazily and decodes no pixels); EXIF rotation
does not change either the shorter side or the aspect ratio. Manifest lines that cannot be read
(invalid JSON, missing files, ...) are skipped as :func:`coembed.data.datasets.read_samples` skips
them and reported beside the rules. The kept samples are written to ``OUT/captions.jsonl`` with image
paths that resolve from ``OUT`` (relative paths between the real, symlink-resolved locations), or
with ``copy_images`` the images are copied under ``OUT``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import unicodedata
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from coembed.data.datasets import MANIFEST_JSONL, Sample, read_samples
from coembed.errors import DataError
from coembed.io import atomic_write_json, atomic_write_text
from coembed.transforms import ImageLoadError, os_error_reason

# load_image's default: the same decompression-bomb limit for headers as for decoding.
MAX_PIXELS = 50_000_000
_IMAGE_EXT = r"(?:jpe?g|png|gif|bmp|webp|tiff?|heic)"
DEFAULT_JUNK_PATTERNS = (
    rf"^\s*\S+\.{_IMAGE_EXT}\s*$",  # the caption is a file name: "IMG_1234.jpg", "photo (2).png"
    r"\b(?:img|dsc|dscn|dscf|pict?|mvimg|screenshot)[_\- ]?\d{3,}\b",  # camera file stems: "IMG_1234", "DSC01234"
    r"(?:https?://|www\.)\S+",  # URLs
    r"\b(?:click here|stock (?:photo|image|picture|footage)|royalty[- ]free|all rights reserved|"
    r"image not (?:found|available)|no (?:image|description) available|placeholder image)\b",
)
EXAMPLES_PER_REASON = 5


@dataclass(kw_only=True)
class FilterConfig:
    """The rules of :func:`filter_dataset`.

    Attributes:
        max_images_per_text: drop a caption text shared by more than this many distinct images
            (ALIGN: 10); 0 turns the rule off.
        min_words: drop captions with fewer words (ALIGN: 3); 0 turns the rule off.
        junk_patterns: regular expressions (Python ``re``, searched case-insensitively) whose match
            drops a caption, in addition to the defaults.
        default_junk: also apply :data:`DEFAULT_JUNK_PATTERNS`.
        min_image_side: drop images whose shorter side is under this many pixels (ALIGN: 200); 0 is off.
        max_aspect: drop images whose longer / shorter side exceeds this (ALIGN: 3); 0 is off.
        copy_images: copy the kept images under the output folder instead of pointing at them.
        max_pixels: images with more pixels are unreadable (the decompression-bomb limit).
    """

    max_images_per_text: int = 10
    min_words: int = 3
    junk_patterns: Sequence[str] = ()
    default_junk: bool = True
    min_image_side: int = 0
    max_aspect: float = 3.0
    copy_images: bool = False
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        for name in ("max_images_per_text", "min_words", "min_image_side", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if isinstance(self.max_aspect, bool) or not isinstance(self.max_aspect, (int, float)) or not (
                self.max_aspect == 0 or 1 <= self.max_aspect < float("inf")):
            raise ValueError(f"max_aspect must be a number >= 1 (or 0 for no limit), got {self.max_aspect!r}")
        for name in ("default_junk", "copy_images"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.junk_patterns, str):
            raise ValueError("junk_patterns must be a list of regular expressions, got a single string")
        self.junk_patterns = tuple(self.junk_patterns)
        for pattern in self.junk_patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as e:
                raise ValueError(f"junk_patterns: {pattern!r} is not a valid regular expression ({e})") from None

    def compiled_junk(self) -> list[re.Pattern]:
        patterns = (DEFAULT_JUNK_PATTERNS if self.default_junk else ()) + tuple(self.junk_patterns)
        return [re.compile(p, re.IGNORECASE) for p in patterns]


@dataclass
class FilterReport:
    """What :func:`filter_dataset` kept and dropped.

    Attributes:
        images_in: samples read from the manifest (after its unreadable lines were skipped).
        captions_in: their captions.
        images_kept: samples written.
        captions_kept: captions written.
        dropped_captions: reason -> count of captions dropped by a caption rule.
        dropped_images: reason -> count of images dropped by an image rule.
        skipped_lines: manifest skip category -> count (lines read_samples could not use).
        examples: reason -> up to five ``{"image", "caption" or "detail"}`` examples.
        manifest: the written manifest.
    """

    images_in: int = 0
    captions_in: int = 0
    images_kept: int = 0
    captions_kept: int = 0
    dropped_captions: dict[str, int] = field(default_factory=dict)
    dropped_images: dict[str, int] = field(default_factory=dict)
    skipped_lines: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    manifest: str = ""

    def drop(self, counts: dict[str, int], reason: str, example: dict[str, str]) -> None:
        counts[reason] = counts.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(example)

    def to_dict(self) -> dict[str, Any]:
        return {"images_in": self.images_in, "captions_in": self.captions_in, "images_kept": self.images_kept,
                "captions_kept": self.captions_kept, "dropped_captions": dict(self.dropped_captions),
                "dropped_images": dict(self.dropped_images), "skipped_lines": dict(self.skipped_lines),
                "examples": {k: list(v) for k, v in self.examples.items()}, "manifest": self.manifest}

    def _example(self, reason: str) -> str:
        """``image 'caption or detail'`` of the first example of ``reason`` ("" when there is none)."""
        shown = self.examples.get(reason)
        if not shown:
            return ""
        return f"{shown[0]['image']} {shown[0].get('caption', shown[0].get('detail', ''))!r:.60}"

    def table(self) -> str:
        """A plain-text summary: kept counts, then one row per reason with its first example."""
        rows = [f"kept {self.images_kept} of {self.images_in} images and {self.captions_kept} of {self.captions_in} "
                f"captions -> {self.manifest}"]
        reasons = [(r, n, "-") for r, n in self.dropped_captions.items()] + [(r, "-", n) for r, n in self.dropped_images.items()]
        reasons += [(f"manifest: {r}", "-", n) for r, n in self.skipped_lines.items()]
        if reasons:
            width = max(len("dropped by"), *(len(r) for r, _, _ in reasons))
            rows.append(f"{'dropped by':<{width}}  {'captions':>8}  {'images':>6}  example")
            for reason, captions, images in reasons:
                rows.append(f"{reason:<{width}}  {captions!s:>8}  {images!s:>6}  {self._example(reason)}".rstrip())
        return "\n".join(rows)


# ----------------------------------------------------------------------------- caption rules
def normalize_text(text: str) -> str:
    """The key of the frequency rule: casefolded, punctuation as spaces, whitespace collapsed."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.casefold()).split())


def word_count(text: str) -> int:
    """Words are runs of letters or digits ("it's" and "3-d" are two words each)."""
    return len(re.findall(r"[^\W_]+", text))


def has_letter(text: str) -> bool:
    return any(unicodedata.category(ch).startswith("L") for ch in text)


def text_image_counts(samples: Sequence[Sample]) -> Counter:
    """Normalised caption text -> number of distinct images that have it."""
    counts: Counter = Counter()
    for sample in samples:
        counts.update({normalize_text(c) for c in sample.captions})
    return counts


def caption_reason(caption: str, cfg: FilterConfig, junk: Sequence[re.Pattern], text_counts: Counter) -> str | None:
    """Why ``caption`` is dropped (the first rule that applies), or None to keep it."""
    if not has_letter(caption):
        return "no letters"
    if any(p.search(caption) for p in junk):
        return "junk pattern"
    if cfg.min_words and word_count(caption) < cfg.min_words:
        return "too few words"
    if cfg.max_images_per_text and text_counts[normalize_text(caption)] > cfg.max_images_per_text:
        return "frequent text"
    return None


# ----------------------------------------------------------------------------- image rules
def read_image_size(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` from the image header, decoding no pixels.

    Raises:
        ImageLoadError: missing, not a regular file, empty, not an image, or more than ``max_pixels``
            pixels (Pillow's decompression-bomb warning counts as an error, as in ``load_image``).
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:
        raise ImageLoadError(path, os_error_reason(path, e)) from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(path, "not an image: path is not a regular file")
    if st.st_size == 0:
        raise ImageLoadError(path, "empty file: 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(path, f"too many pixels: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(path, "not an image: unrecognised file format") from None
    except Exception as e:  # noqa: BLE001 - Pillow's plugins raise many types for a corrupt header
        raise ImageLoadError(path, f"truncated or corrupt: {type(e).__name__}: {e}") from None
    if width * height > max_pixels:
        raise ImageLoadError(path, f"too many pixels: {width}x{height} > max_pixels={max_pixels}")
    return width, height


def image_reason(path: Path, cfg: FilterConfig) -> tuple[str, str] | None:
    """``(reason, detail)`` when the image is dropped, else None."""
    try:
        width, height = read_image_size(path, cfg.max_pixels)
    except ImageLoadError as e:
        return "unreadable image", e.reason
    short, long = min(width, height), max(width, height)
    if short == 0:
        return "unreadable image", f"not an image: size {width}x{height}"
    if cfg.min_image_side and short < cfg.min_image_side:
        return "image too small", f"{width}x{height}, shorter side < {cfg.min_image_side}"
    if cfg.max_aspect and long / short > cfg.max_aspect:
        return "extreme aspect ratio", f"{width}x{height}, aspect {long / short:.2f} > {cfg.max_aspect:g}"
    return None


# ----------------------------------------------------------------------------- the command
def _kept_captions(sample: Sample, cfg: FilterConfig, junk: list[re.Pattern], counts: Counter,
                   report: FilterReport) -> list[str]:
    kept = []
    for caption in sample.captions:
        reason = caption_reason(caption, cfg, junk, counts)
        if reason is None:
            kept.append(caption)
        else:
            report.drop(report.dropped_captions, reason, {"image": sample.image, "caption": caption})
    return kept


def _output_image(src_root: Path, out: Path, image: str, copy: bool, index: int) -> str:
    """The image path the output manifest names (copying the file first with ``copy``)."""
    real = Path(os.path.realpath(src_root / image))
    if not copy:
        # Both ends symlink-resolved: a ".." in the relative path then walks the real folders.
        return Path(os.path.relpath(real, os.path.realpath(out))).as_posix()
    rel = Path(image)
    inside = not rel.is_absolute() and ".." not in rel.parts
    target = Path(rel.as_posix()) if inside else Path("images") / f"{index:06d}_{real.name}"
    (out / target).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(real, out / target)
    return target.as_posix()


def _check_folders(src: Path, out: Path) -> None:
    if not src.is_dir():
        raise DataError(f"dataset folder {src} does not exist" if not src.exists() else f"{src} is not a folder")
    if out.exists() and not out.is_dir():
        raise DataError(f"output folder {out} is a file; give a folder")
    if out.exists() and os.path.samefile(src, out):
        raise DataError(f"output folder {out} is the dataset folder; give another folder (the manifest would be overwritten)")


def filter_dataset(src: str | os.PathLike, out: str | os.PathLike, cfg: FilterConfig,
                   progress: Callable[[int, int], None] | None = None) -> FilterReport:
    """Apply the rules to the dataset folder ``src`` and write the kept samples to ``out``.

    Writes ``out/captions.jsonl`` (atomically; each line keeps the input line's other fields) and
    ``out/filter_report.json``.

    Raises:
        DataError: ``src`` is missing or has no usable manifest, or ``out`` is a file or ``src``.
    """
    src, out = Path(src), Path(out)
    _check_folders(src, out)
    samples, skips = read_samples(src)
    report = FilterReport(images_in=len(samples), captions_in=sum(len(s.captions) for s in samples),
                          skipped_lines=dict(skips.by_reason), manifest=str(out / MANIFEST_JSONL))
    counts, junk = text_image_counts(samples), cfg.compiled_junk()
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, sample in enumerate(samples):
        line = _filter_sample(src, out, sample, cfg, junk, counts, report, i)
        if line is not None:
            lines.append(line)
        if progress and ((i + 1) % 1000 == 0 or i + 1 == len(samples)):
            progress(i + 1, len(samples))
    report.images_kept, report.captions_kept = len(lines), sum(len(x["captions"]) for x in lines)
    atomic_write_text(out / MANIFEST_JSONL, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    atomic_write_json(out / "filter_report.json", report.to_dict())
    return report


def _filter_sample(src: Path, out: Path, sample: Sample, cfg: FilterConfig, junk: list[re.Pattern], counts: Counter,
                   report: FilterReport, index: int) -> dict[str, Any] | None:
    """The output manifest line of one sample, or None when the sample is dropped."""
    kept = _kept_captions(sample, cfg, junk, counts, report)
    if not kept:
        report.drop(report.dropped_images, "no caption left", {"image": sample.image, "detail": f"{len(sample.captions)} dropped"})
        return None
    problem = image_reason(src / sample.image, cfg)
    if problem is not None:
        report.drop(report.dropped_images, problem[0], {"image": sample.image, "detail": problem[1]})
        return None
    image = _output_image(src, out, sample.image, cfg.copy_images, index)
    return {"image": image, "captions": kept, **sample.meta}
