"""Web-noise on purpose (``coembed data corrupt``): replace the captions of a share of a dataset's images
with captions of other, randomly drawn images, and record which ones were replaced.

The experiment of BLIP's CapFilt needs a dataset whose noise is known: the filter's precision and recall
are measured against the recorded truth. A corrupted image keeps its own file; each of its captions is
replaced by one caption (uniformly drawn) of another image (uniformly drawn, never itself), so the
caption is fluent and on-distribution but describes the wrong picture: the kind of noise a web alt-text
brings. Each output line carries ``corrupted`` (one flag per caption) and, for the corrupted ones,
``original_captions``.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coembed.data.datasets import MANIFEST_JSONL, Sample, read_samples
from coembed.data.filters import _check_folders, _output_image
from coembed.errors import DataError
from coembed.io import atomic_write_json, atomic_write_text

REPORT_FILE = "corrupt_report.json"


@dataclass
class CorruptReport:
    """What :func:`corrupt_dataset` wrote.

    Attributes:
        images: samples written.
        captions: captions written.
        corrupted_images: images whose captions were replaced.
        corrupted_captions: captions replaced.
        fraction: the share asked for.
        seed: the random seed.
        manifest: the written manifest.
        skipped_lines: manifest skip category -> count (lines read_samples could not use).
    """

    images: int = 0
    captions: int = 0
    corrupted_images: int = 0
    corrupted_captions: int = 0
    fraction: float = 0.0
    seed: int = 0
    manifest: str = ""
    skipped_lines: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def table(self) -> str:
        return (f"corrupted {self.corrupted_captions} of {self.captions} captions ({self.corrupted_images} of "
                f"{self.images} images; fraction {self.fraction:g}, seed {self.seed}) -> {self.manifest}")


def corrupted_lines(samples: list[Sample], fraction: float, seed: int) -> list[dict[str, Any]]:
    """The manifest lines (image paths as in ``samples``) with ``round(fraction * len(samples))`` images'
    captions replaced by captions of other images.

    Raises:
        ValueError: ``fraction`` outside [0, 1], or fewer than two samples with a fraction above 0.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    n = len(samples)
    chosen = set(random.Random(seed).sample(range(n), round(fraction * n))) if n else set()
    if chosen and n < 2:
        raise ValueError("corrupting needs at least two images (a caption comes from another image)")
    rng = random.Random(seed + 1)  # a second stream: which images and which donors do not share draws
    lines = []
    for i, sample in enumerate(samples):
        line = {"image": sample.image, "captions": list(sample.captions), **sample.meta}
        if i in chosen:
            line["captions"] = [_donor_caption(samples, i, rng) for _ in sample.captions]
            line["original_captions"] = list(sample.captions)
        line["corrupted"] = [i in chosen] * len(sample.captions)
        lines.append(line)
    return lines


def _donor_caption(samples: list[Sample], i: int, rng: random.Random) -> str:
    donor = rng.randrange(len(samples) - 1)
    donor += donor >= i  # uniform over the other images
    return rng.choice(samples[donor].captions)


def corrupt_dataset(src: str | os.PathLike, out: str | os.PathLike, fraction: float, seed: int = 0) -> CorruptReport:
    """Write ``out/captions.jsonl`` (atomically; image paths resolve from ``out``) with a share of
    ``src``'s images given other images' captions, and ``out/corrupt_report.json``.

    Raises:
        DataError: ``src`` is missing or has no usable manifest, or ``out`` is a file or ``src``.
        ValueError: a bad ``fraction``.
    """
    src, out = Path(src), Path(out)
    _check_folders(src, out)
    samples, skips = read_samples(src)
    lines = corrupted_lines(samples, fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    for line in lines:
        line["image"] = _output_image(src, out, line["image"], False, 0)
    flags = [f for line in lines for f in line["corrupted"]]
    report = CorruptReport(images=len(lines), captions=len(flags), corrupted_images=sum(x["corrupted"][0] for x in lines),
                           corrupted_captions=sum(flags), fraction=fraction, seed=seed,
                           manifest=str(out / MANIFEST_JSONL), skipped_lines=dict(skips.by_reason))
    atomic_write_text(out / MANIFEST_JSONL, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    atomic_write_json(out / REPORT_FILE, report.to_dict())
    return report


def corruption_truth(folder: str | os.PathLike) -> dict[tuple[str, str], bool]:
    """``(real image path, caption) -> corrupted`` of a folder written by :func:`corrupt_dataset`.

    Raises:
        DataError: a manifest line without ``corrupted`` flags (not written by ``coembed data corrupt``).
    """
    folder = Path(folder)
    truth: dict[tuple[str, str], bool] = {}
    for n, text in enumerate((folder / MANIFEST_JSONL).read_text(encoding="utf-8").splitlines(), 1):
        line = json.loads(text)
        if len(line.get("corrupted", ())) != len(line["captions"]):
            raise DataError(f"{folder / MANIFEST_JSONL} line {n} has no 'corrupted' flag per caption; "
                            "was it written by `coembed data corrupt`?")
        image = os.path.realpath(folder / line["image"])
        truth.update({(image, c): bool(f) for c, f in zip(line["captions"], line["corrupted"])})
    return truth
