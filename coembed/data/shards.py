"""WebDataset tar shards as img2dataset writes them: write them from any coembed dataset, read them to train.

Layout of an output folder (one per split when the source has split folders: ``OUT/train/``, ...)::

    00000.tar          members {key}.png or {key}.jpg (the source bytes), {key}.txt, {key}.json
    00000_stats.json   the shard's counts, skips, tar size and a digest of the source it came from
    _stats.json        the folder's shards and sample counts (and at OUT/ over all splits)

Keys follow img2dataset: shard ``s``, sample ``i`` of ``N`` per shard is ``s * 10**d + i`` with
``d = ceil(log10(N))`` digits for the sample, zero-padded to ``5 + d`` digits (``"000000003"`` is
sample 3 of shard 0 with 10,000 per shard). A sample whose image cannot be read is skipped and leaves
a gap in the keys, as img2dataset's failed downloads do, so which samples a shard holds depends only
on the source manifest and a rerun can keep every shard that is already complete.

Tar members are written in sorted order with mtime 0, uid/gid 0, empty owner names and mode 0444, so
the same source gives the same bytes. The reader groups members into samples by key (the name up to
the first dot of its last path component, as webdataset does) and streams uncompressed ``.tar`` only.
"""

from __future__ import annotations

import glob
import hashlib
import io
import itertools
import json
import os
import random
import re
import tarfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from coembed.data.datasets import (
    IMAGE_SUFFIXES,
    Sample,
    SkipReport,
    candidate_negatives,
    choose_caption,
    choose_negative,
    clean_caption,
    collate_image_text,
    read_samples,
)
from coembed.data.splits import SPLITS, split_root
from coembed.errors import ConfigError, DataError
from coembed.io import atomic_write_json, atomic_writer
from coembed.transforms import ImageLoadError, decode_image_bytes, os_error_reason

SHARD_DIGITS = 5  # img2dataset's default oom_shard_count
STATS_NAME = "_stats.json"
TAR_BLOCK = 512
# Image member extensions, in the order the reader prefers them when a sample has several.
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
_JSON_OWN_FIELDS = ("key", "image", "captions")
_TMP_NAME = re.compile(r"^\.\d+\.tar\..*\.tmp$")

T = TypeVar("T")


# ----------------------------------------------------------------------------- keys and names
def key_digits(samples_per_shard: int) -> int:
    """img2dataset's ``oom_sample_per_shard``, ``ceil(log10(samples_per_shard))``, in integers."""
    return len(str(samples_per_shard - 1)) if samples_per_shard > 1 else 0


def sample_key(shard: int, index: int, samples_per_shard: int, shard_digits: int = SHARD_DIGITS) -> str:
    """The img2dataset key of sample ``index`` of shard ``shard``: ``sample_key(0, 3, 10000) == "000000003"``."""
    digits = key_digits(samples_per_shard)
    return f"{shard * 10**digits + index:0{shard_digits + digits}d}"


def shard_name(shard: int, shard_digits: int = SHARD_DIGITS) -> str:
    return f"{shard:0{shard_digits}d}"


def image_ext(relpath: str) -> str | None:
    """The member extension for an image path: its suffix lowercased, ``jpeg`` as ``jpg``; None if not an image."""
    suffix = Path(relpath).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        return None
    return "jpg" if suffix == ".jpeg" else suffix[1:]


# ----------------------------------------------------------------------------- writer: results
@dataclass(frozen=True)
class ShardInfo:
    """One written shard.

    Attributes:
        path: POSIX path relative to the output folder, e.g. ``"train/00000.tar"``.
        samples: samples in the tar.
        skipped: samples of its slots left out (unreadable images).
        reused: the shard was complete from an earlier run and left alone.
    """

    path: str
    samples: int
    skipped: int
    reused: bool


@dataclass
class ShardStats:
    """What :func:`write_shards` did.

    Attributes:
        out: the output folder.
        shards: every shard of the output, in order (split by split).
        skipped: manifest lines and images left out, over all splits.
        splits: split name -> samples written; empty when the source is one folder.
        stale: ``.tar`` files in the output folders that are not part of this output (left from an
            earlier run over more samples, say); readers given the folder would read them too.
    """

    out: Path
    shards: list[ShardInfo] = field(default_factory=list)
    skipped: SkipReport = field(default_factory=SkipReport)
    splits: dict[str, int] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def reused(self) -> int:
        return sum(s.reused for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "samples": self.samples, "shards": len(self.shards),
                "written": len(self.shards) - self.reused, "reused": self.reused, "splits": dict(self.splits),
                "skipped": self.skipped.total, "skipped_by_reason": dict(self.skipped.by_reason),
                "skipped_examples": [list(e) for e in self.skipped.examples],
                "files": [{"path": s.path, "samples": s.samples, "skipped": s.skipped, "reused": s.reused} for s in self.shards],
                "stale": list(self.stale)}

    def summary(self) -> str:
        """``wrote 3 shards (1 new, 2 complete from before) with 380 samples to OUT: train 256, val 64, test 60``."""
        splits = ": " + ", ".join(f"{k} {v}" for k, v in self.splits.items()) if self.splits else ""
        line = (f"wrote {len(self.shards)} shards ({len(self.shards) - self.reused} new, {self.reused} complete from before) "
                f"with {self.samples} samples to {self.out}{splits}")
        if self.stale:
            line += f"; {len(self.stale)} other .tar files there are not part of it: {', '.join(self.stale[:5])}"
        return line


# ----------------------------------------------------------------------------- writer
def write_shards(src: str | os.PathLike, out: str | os.PathLike, samples_per_shard: int, *,
                 progress: Callable[[int, int], None] | None = None, max_pixels: int = 50_000_000) -> ShardStats:
    """Write a coembed dataset (folder with a manifest, or split folders) as img2dataset-style tar shards.

    Args:
        src: dataset folder; with ``train/``, ``val/``, ... split folders each becomes ``out/<split>/``.
        out: output folder (created).
        samples_per_shard: slots per shard; the last shard may hold fewer.
        progress: called as ``progress(done, total)`` with samples handled so far.
        max_pixels: images whose header claims more pixels are skipped.

    Raises:
        ConfigError: ``samples_per_shard`` is not positive.
        DataError: ``src`` is not a dataset, ``out`` is a file, or a split has no usable sample.
    """
    if samples_per_shard < 1:
        raise ConfigError(f"samples_per_shard must be a positive integer, got {samples_per_shard}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"output folder {out} is a file")
    parts = [(split, root, *read_samples(root)) for split, root in _source_parts(Path(src))]
    counter = _Counter(sum(len(p[2]) for p in parts), progress)
    stats = ShardStats(out)
    for split, root, samples, report in parts:
        folder = out / split if split else out
        infos = _write_folder(root, samples, folder, samples_per_shard, report, counter, max_pixels)
        _write_manifest(folder, infos, report, samples_per_shard)
        prefix = f"{split}/" if split else ""
        stats.shards.extend(ShardInfo(prefix + i.path, i.samples, i.skipped, i.reused) for i in infos)
        stats.stale.extend(prefix + p.name for p in sorted(folder.glob("*.tar")) if p.name not in {i.path for i in infos})
        stats.skipped.merge(report)
        if split:
            stats.splits[split] = sum(i.samples for i in infos)
    if stats.splits:
        _write_manifest(out, stats.shards, stats.skipped, samples_per_shard, splits=stats.splits)
    return stats


def _source_parts(src: Path) -> list[tuple[str, Path]]:
    """``[(split, folder)]`` for a dataset of split folders, else ``[("", src)]``."""
    found = [s for s in SPLITS if (src / s).is_dir()]
    if found:
        return [(s, split_root(src, s)) for s in found]
    return [("", split_root(src, "train"))]


class _Counter:
    def __init__(self, total: int, progress: Callable[[int, int], None] | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, self.total)


def _write_folder(root: Path, samples: list[Sample], folder: Path, per_shard: int, report: SkipReport,
                  counter: _Counter, max_pixels: int) -> list[ShardInfo]:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():  # temporary files of a run that was killed mid-shard
        if _TMP_NAME.match(stale.name):
            stale.unlink(missing_ok=True)
    digits = max(SHARD_DIGITS, len(str(max(len(samples) - 1, 0) // per_shard)))
    infos = []
    for shard, start in enumerate(range(0, len(samples), per_shard)):
        chunk = samples[start:start + per_shard]
        job = _ShardJob(root, folder, shard, shard_name(shard, digits), digits, per_shard, max_pixels, chunk,
                        _source_digest(root, chunk, per_shard, digits))
        infos.append(_reuse(job, report, counter) or _write_shard(job, report, counter))
    return infos


@dataclass(frozen=True)
class _ShardJob:
    root: Path  # source folder
    folder: Path  # output folder
    shard: int
    name: str  # "00000"
    shard_digits: int
    per_shard: int
    max_pixels: int
    chunk: list[Sample]  # the samples of its slots
    digest: str  # of the source, see _source_digest

    @property
    def tar(self) -> Path:
        return self.folder / f"{self.name}.tar"

    @property
    def stats(self) -> Path:
        return self.folder / f"{self.name}_stats.json"


def _source_digest(root: Path, chunk: list[Sample], per_shard: int, shard_digits: int) -> str:
    """A digest of what a shard is made of: its manifest entries and each image file's size and mtime."""
    h = hashlib.sha256(json.dumps([per_shard, shard_digits]).encode())
    for sample in chunk:
        try:
            st = (root / sample.image).stat()
            file_id = [st.st_size, st.st_mtime_ns]
        except OSError:
            file_id = None
        h.update(json.dumps([sample.image, sample.captions, sample.meta, file_id], default=str).encode())
    return h.hexdigest()


def _reuse(job: _ShardJob, report: SkipReport, counter: _Counter) -> ShardInfo | None:
    """The shard's info if an earlier run wrote it completely from the same source, else None."""
    try:
        saved = json.loads(job.stats.read_text(encoding="utf-8"))
        complete = (saved["status"] == "success" and saved["tar_bytes"] == job.tar.stat().st_size
                    and saved["source_digest"] == job.digest)
        skips = SkipReport(dict(saved["skipped"]["by_reason"]), [tuple(e) for e in saved["skipped"]["examples"]])
        info = ShardInfo(job.tar.name, int(saved["successes"]), int(saved["failed"]), reused=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not complete:
        return None
    report.merge(skips)
    counter.add(len(job.chunk))
    return info


def _write_shard(job: _ShardJob, report: SkipReport, counter: _Counter) -> ShardInfo:
    skips, written = SkipReport(), 0
    job.stats.unlink(missing_ok=True)  # a tar without its stats file is never taken as complete
    with atomic_writer(job.tar) as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for index, sample in enumerate(job.chunk):
                key = sample_key(job.shard, index, job.per_shard, job.shard_digits)
                written += _write_sample(tar, job, sample, key, skips)
                counter.add(1)
        size = f.tell()
    atomic_write_json(job.stats, {
        "shard": job.tar.name, "status": "success", "count": len(job.chunk), "successes": written,
        "failed": len(job.chunk) - written, "first_key": sample_key(job.shard, 0, job.per_shard, job.shard_digits),
        "skipped": {"by_reason": skips.by_reason, "examples": [list(e) for e in skips.examples]},
        "tar_bytes": size, "samples_per_shard": job.per_shard, "source_digest": job.digest})
    report.merge(skips)
    return ShardInfo(job.tar.name, written, len(job.chunk) - written, reused=False)


def _write_sample(tar: tarfile.TarFile, job: _ShardJob, sample: Sample, key: str, skips: SkipReport) -> bool:
    data, reason = _read_image(job.root, sample.image, job.max_pixels)
    if data is None:
        skips.add(sample.image, reason)
        return False
    extra = {k: v for k, v in sample.meta.items() if k not in _JSON_OWN_FIELDS}
    meta = {"key": key, "image": sample.image, "captions": list(sample.captions), **extra}
    members = [(f"{key}.{image_ext(sample.image)}", data),
               (f"{key}.txt", sample.captions[0].encode("utf-8")),
               (f"{key}.json", _json_bytes(meta))]
    for name, payload in sorted(members):
        _add_member(tar, name, payload)
    return True


def _json_bytes(meta: Any) -> bytes:
    """UTF-8 JSON; a manifest field holding a lone surrogate (JSON allows ``"\\ud800"``) cannot be
    UTF-8, so that sample's JSON is written with ``\\u`` escapes instead, which read back the same."""
    try:
        return json.dumps(meta, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(meta).encode("ascii")


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(payload))


def _read_image(root: Path, relpath: str, max_pixels: int) -> tuple[bytes | None, str]:
    """The image file's bytes unchanged, after a header check (format and size, no pixel decode)."""
    if image_ext(relpath) is None:
        return None, f"not an image: extension {Path(relpath).suffix or '(none)'!r} is not an image type"
    try:
        data = (root / relpath).read_bytes()
    except OSError as e:
        missing = isinstance(e, FileNotFoundError) and not os.path.islink(root / relpath)
        return None, "missing file: no such image file" if missing else os_error_reason(root / relpath, e)
    if not data:
        return None, "empty file: 0 bytes"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Image.UnidentifiedImageError:
        return None, "not an image: unrecognised file format"
    except Image.DecompressionBombError as e:
        return None, f"too many pixels: {e}"
    except Exception as e:  # noqa: BLE001 - Pillow reports bad headers with many exception types
        return None, f"truncated or corrupt: {type(e).__name__}: {e}"
    if width * height > max_pixels:
        return None, f"too many pixels: {width}x{height} = {width * height} > max_pixels={max_pixels}"
    return data, ""


def _write_manifest(folder: Path, infos: list[ShardInfo], report: SkipReport, per_shard: int,
                    splits: dict[str, int] | None = None) -> None:
    manifest: dict[str, Any] = {"format": "webdataset", "writer": "coembed", "samples_per_shard": per_shard,
                                "samples": sum(i.samples for i in infos), "skipped": report.total,
                                "skipped_by_reason": dict(report.by_reason)}
    if splits is not None:
        manifest["splits"] = dict(splits)
    manifest["shards"] = [{"name": i.path, "samples": i.samples, "skipped": i.skipped} for i in infos]
    atomic_write_json(folder / STATS_NAME, manifest)


# ----------------------------------------------------------------------------- shard lists
def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` lists and ``{00000..00009}`` ranges (zero-padded like the bounds), several per pattern.

    ``expand_braces("s-{0..2}.tar") == ["s-0.tar", "s-1.tar", "s-2.tar"]``; a brace without ``,`` or
    ``..`` stays as it is.
    """
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[:match.start()], expand_braces(pattern[match.end():])
    return [head + choice + rest for choice in _brace_choices(match.group(1)) for rest in tail]


def _brace_choices(body: str) -> list[str]:
    span = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if span:
        first, last = span.groups()
        padded = first.lstrip("-").startswith("0") or last.lstrip("-").startswith("0")
        width = max(len(first), len(last)) if padded else 0
        lo, hi = int(first), int(last)
        step = 1 if hi >= lo else -1
        return [f"{n:0{width}d}" for n in range(lo, hi + step, step)]
    return body.split(",") if "," in body else ["{" + body + "}"]


def resolve_shards(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """Shard files named by a folder (its ``*.tar``, sorted), a glob, brace notation, a file, or a list of these.

    Raises:
        DataError: a name matches no file, or a folder holds no ``.tar``.
    """
    specs = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found = [shard for spec in specs for shard in _resolve_one(os.fspath(spec))]
    if not found:
        raise DataError("no tar shards given")
    return found


def _resolve_one(spec: str) -> list[Path]:
    if os.path.isdir(spec):
        tars = sorted(Path(spec).glob("*.tar"))
        if not tars:
            splits = [s for s in SPLITS if (Path(spec) / s).is_dir()]
            hint = f" (it has split folders {', '.join(splits)}: name one, e.g. {Path(spec) / splits[0]})" if splits else ""
            raise DataError(f"shard folder {spec} holds no .tar files{hint}")
        return tars
    found = []
    for pattern in expand_braces(spec):
        if re.search(r"[*?[]", pattern):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise DataError(f"shard pattern {pattern} matches no file")
            found.extend(map(Path, matches))
        elif os.path.isfile(pattern):
            found.append(Path(pattern))
        else:
            raise DataError(f"shard {pattern} does not exist" if not os.path.exists(pattern) else f"shard {pattern} is not a file")
    return found


# ----------------------------------------------------------------------------- tar reading
class TarSample(NamedTuple):
    """The members of one sample: extension (lowercased, e.g. ``"png"``, ``"json"``) -> bytes."""

    shard: str  # file name of the shard
    key: str
    members: dict[str, bytes]


class ShardProblem(NamedTuple):
    """A shard that could not be read to its end; ``reason`` is ``"truncated shard: NAME: detail"`` or alike."""

    shard: str
    reason: str


def split_member_name(name: str) -> tuple[str, str] | None:
    """``"dir/000001.seg.png"`` -> ``("dir/000001", "seg.png")`` as webdataset splits names; None without a dot."""
    match = re.match(r"^((?:.*/|)[^./]+)\.([^/]*)$", name)
    return (match.group(1), match.group(2).lower()) if match else None


def read_tar(path: str | os.PathLike) -> Iterator[TarSample | ShardProblem]:
    """Stream a tar's samples in order; a truncated or unreadable tar ends with one :class:`ShardProblem`
    after the samples read whole before the damage."""
    path = Path(path)
    try:
        f = path.open("rb")
    except OSError as e:
        yield ShardProblem(path.name, f"unreadable shard: {path.name}: {e.strerror or e}")
        return
    with f:
        size, current, problem = os.fstat(f.fileno()).st_size, None, None
        try:
            with tarfile.open(fileobj=f, mode="r|") as tar:
                for key, ext, data in _tar_members(tar):
                    if current is not None and current.key != key:
                        yield current
                        current = None
                    current = current or TarSample(path.name, key, {})
                    current.members.setdefault(ext, data)
                end = tar.offset
        except (tarfile.TarError, EOFError, OSError) as e:  # tarfile's "unexpected end of data", ...
            problem = f"truncated shard: {path.name}: {type(e).__name__}: {e}"
        else:
            # Cut exactly between members, a tar reads as a shorter valid one; only the end marker tells.
            if size < end + TAR_BLOCK:
                problem = f"truncated shard: {path.name}: no end-of-archive marker after {end} bytes"
        if current is not None:
            yield current
        if problem is not None:
            yield ShardProblem(path.name, problem)


def _tar_members(tar: tarfile.TarFile) -> Iterator[tuple[str, str, bytes]]:
    """``(key, extension, bytes)`` of each regular member whose name has an extension, in archive order."""
    for member in tar:
        parts = split_member_name(member.name) if member.isfile() else None
        if parts is not None:
            yield parts[0], parts[1], tar.extractfile(member).read()


# ----------------------------------------------------------------------------- samples to items
def sample_index(key: str) -> int:
    """The integer standing for a sample in batches and in caption seeding: the key itself when it is
    digits (img2dataset keys are unique over a dataset), else a stable 63-bit hash of it."""
    if key.isascii() and key.isdigit() and len(key) < 19:
        return int(key)
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") >> 1


class _Parsed(NamedTuple):
    image: bytes
    captions: list[str]
    meta: dict[str, Any]


def parse_sample(members: dict[str, bytes]) -> tuple[_Parsed | None, str]:
    """The image bytes, captions and json meta of a sample, or None and a ``"category: detail"`` reason.

    Captions are the ``.txt`` first, then the json's ``captions`` list and ``caption`` string (cleaned,
    duplicates dropped)."""
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
        return None, f"no image: no .jpg/.png/... member, only {', '.join('.' + e for e in sorted(members))}"
    meta: Any = {}
    if "json" in members:
        try:
            meta = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            return None, f"invalid JSON: .json member: {e}"
        if not isinstance(meta, dict):
            return None, f"invalid JSON: .json member is a {type(meta).__name__}, not an object"
    try:
        text = [members["txt"].decode("utf-8")] if "txt" in members else []
    except UnicodeDecodeError:
        return None, "invalid UTF-8: .txt member is not UTF-8 text"
    listed = meta.get("captions")
    text += [c for c in listed if isinstance(c, str)] if isinstance(listed, list) else []
    text += [meta["caption"]] if isinstance(meta.get("caption"), str) else []
    captions = list(dict.fromkeys(c for c in map(clean_caption, text) if c))
    if not captions:
        return None, "empty caption: no .txt member and no captions in the .json"
    return _Parsed(members[ext], captions, meta), ""


def shuffle_buffer(items: Iterable[T], size: int, rng: random.Random) -> Iterator[T]:
    """Shuffle a stream through a buffer of ``size`` items (as webdataset's ``shuffle``); 0 or 1 keeps the order."""
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


# ----------------------------------------------------------------------------- the dataset
def _distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got rank {rank}, world_size {world_size}")
    return rank, world_size


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ShardDataset(IterableDataset):
    """Items of tar shards in the format of :class:`coembed.data.datasets.ImageTextDataset`:
    ``(index, image tensor or None, caption, name, skip reason or None)``, plus a hard-negative caption
    (or None) with ``with_negatives``; :func:`collate_image_text` batches them.

    ``index`` is :func:`sample_index` of the key and ``name`` is ``"<shard>/<key>"``. A sample that
    cannot be used (image that does not decode, bad json, no caption, no image member) comes with
    image None and the reason, as a failed image does in ImageTextDataset; a shard that ends early
    adds one such item named after the shard with reason ``"truncated shard: ..."``, and iteration
    goes on with the next shard.

    Shards are split over ``world_size * workers`` readers, reader ``rank * workers + worker`` taking
    every so-many-th shard. With ``resampled`` every reader instead draws shards with replacement
    from all of them, forever. ``shuffle=N`` shuffles the shard order per epoch (the same order on
    every rank) and the samples through an N-item buffer. Every random choice is seeded by
    ``(seed, epoch, ...)``, so a run repeats exactly.
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], preprocess: Callable[[Image.Image], torch.Tensor],
                 *, seed: int = 0, rank: int | None = None, world_size: int | None = None, shuffle: int = 0,
                 resampled: bool = False, caption_mode: str = "random", with_negatives: bool = False,
                 negative_types: Sequence[str] | None = None, max_pixels: int = 50_000_000) -> None:
        super().__init__()
        if caption_mode not in ("random", "first"):
            raise ValueError(f"caption_mode must be 'random' or 'first', got {caption_mode!r}")
        if shuffle < 0:
            raise ValueError(f"shuffle must be >= 0 (0 = off), got {shuffle}")
        self.shards = resolve_shards(paths)
        self.rank, self.world_size = _distributed_defaults(rank, world_size)
        self.preprocess, self.seed, self.shuffle, self.resampled = preprocess, seed, shuffle, resampled
        self.caption_mode, self.with_negatives, self.max_pixels = caption_mode, with_negatives, max_pixels
        self.negative_types = set(negative_types) if negative_types else None
        self.epoch, self.skip_items_per_batch, self.skip_batches = 0, 1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_skip(self, batches: int, batch_size: int) -> None:
        """Skip the first ``batches`` batches of ``batch_size`` a DataLoader over this dataset would give,
        without decoding them (see :func:`shard_loader`)."""
        if batches < 0 or batch_size < 1:
            raise ValueError(f"need batches >= 0 and batch_size >= 1, got {batches}, {batch_size}")
        self.skip_batches, self.skip_items_per_batch = batches, batch_size

    def _rng(self, *parts: object) -> random.Random:
        # A string seed is hashed with SHA-512: the same stream in every process, whatever PYTHONHASHSEED.
        return random.Random(":".join(map(str, (self.seed, self.epoch, *parts))))

    def epoch_shards(self) -> list[Path]:
        """All shards in this epoch's order (shuffled by ``(seed, epoch)`` when ``shuffle`` is on)."""
        shards = list(self.shards)
        if self.shuffle:
            self._rng("shards").shuffle(shards)
        return shards

    def reader_shards(self, worker: int = 0, workers: int = 1) -> Iterator[Path]:
        """The shards reader ``(rank, worker)`` reads this epoch (endless when ``resampled``)."""
        if not self.resampled:
            yield from self.epoch_shards()[self.rank * workers + worker::self.world_size * workers]
            return
        rng = self._rng("resample", self.rank, worker)
        while True:
            yield rng.choice(self.shards)

    def __iter__(self) -> Iterator[tuple]:
        worker, workers = _worker()
        # A DataLoader takes batches from its workers in turn from worker 0: batch b came from worker
        # b % W. After skipping k batches, worker w makes what worker (w + k) % W made, minus what it skips.
        worker = (worker + self.skip_batches) % workers
        skipped = self.skip_batches // workers + (worker < self.skip_batches % workers)
        raw: Iterator[TarSample | ShardProblem] = (s for shard in self.reader_shards(worker, workers) for s in read_tar(shard))
        if self.shuffle > 1:
            raw = shuffle_buffer(raw, self.shuffle, self._rng("buffer", self.rank, worker))
        for item in itertools.islice(raw, skipped * self.skip_items_per_batch, None):
            yield self.item(item)

    def item(self, raw: TarSample | ShardProblem) -> tuple:
        """The training item for one read sample (or shard problem)."""
        if isinstance(raw, ShardProblem):
            return self._failed(-1, raw.shard, raw.reason)
        index, name = sample_index(raw.key), f"{raw.shard}/{raw.key}"
        parsed, reason = parse_sample(raw.members)
        if parsed is None:
            return self._failed(index, name, reason)
        try:
            image = self.preprocess(decode_image_bytes(parsed.image, name=name, max_pixels=self.max_pixels))
        except ImageLoadError as e:
            return self._failed(index, name, e.reason)
        caption = choose_caption(parsed.captions, self.caption_mode, seed=self.seed, epoch=self.epoch, index=index)
        if not self.with_negatives:
            return index, image, caption, name, None
        negatives = candidate_negatives(parsed.meta, self.negative_types)
        return index, image, caption, name, None, choose_negative(negatives, seed=self.seed, epoch=self.epoch, index=index)

    def _failed(self, index: int, name: str, reason: str) -> tuple:
        item = (index, None, "", name, reason)
        return (*item, None) if self.with_negatives else item


def shard_loader(paths: str | os.PathLike | Sequence[str | os.PathLike], *, batch_size: int,
                 preprocess: Callable[[Image.Image], torch.Tensor], seed: int = 0, epoch: int = 0, rank: int | None = None,
                 world_size: int | None = None, workers: int = 0, shuffle: int = 0, resampled: bool = False,
                 skip_batches: int = 0, caption_mode: str = "random", with_negatives: bool = False) -> DataLoader:
    """A DataLoader of :class:`coembed.data.datasets.ImageTextBatch` over tar shards (``drop_last``: each
    worker drops its own last partial batch).

    ``skip_batches`` leaves out the first batches a run already consumed, without decoding them. The
    order being deterministic, this is exact while every worker still has batches at that point:
    always for ``resampled`` streams and with ``workers <= 1``; near the end of a finite epoch whose
    workers hold unequal shares it can differ by the batches of workers that already ran out.

    Raises:
        DataError: fewer shards than ranks (a rank would get nothing), or a shard name matches no file.
    """
    dataset = ShardDataset(paths, preprocess, seed=seed, rank=rank, world_size=world_size, shuffle=shuffle,
                           resampled=resampled, caption_mode=caption_mode, with_negatives=with_negatives)
    if not resampled and len(dataset.shards) < dataset.world_size:
        raise DataError(f"{len(dataset.shards)} shards cannot feed {dataset.world_size} ranks; "
                        "write smaller shards or use resampled shards")
    dataset.set_epoch(epoch)
    dataset.set_skip(skip_batches, batch_size)
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_image_text, drop_last=True)


# ----------------------------------------------------------------------------- what a trainer needs up front
def shard_sample_count(shard: str | os.PathLike) -> int | None:
    """Samples in ``shard`` as its img2dataset-style ``{name}_stats.json`` records (``successes``),
    or None when there is no readable stats file."""
    shard = Path(shard)
    try:
        stats = json.loads((shard.parent / f"{shard.stem}_stats.json").read_text())
        return int(stats["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def count_samples(shards: Sequence[str | os.PathLike]) -> int:
    """Samples in all ``shards``: from their stats files, reading a shard only when it has none."""
    total = 0
    for shard in shards:
        count = shard_sample_count(shard)
        if count is None:
            count = sum(1 for s in read_tar(shard) if isinstance(s, TarSample))
        total += count
    return total


def shard_captions(shards: Sequence[str | os.PathLike], limit: int) -> list[str]:
    """Up to ``limit`` captions (every caption of each sample) from the first shards, in order: what a
    tokenizer is trained on when the training data streams from shards."""
    captions: list[str] = []
    for shard in shards:
        for raw in read_tar(shard):
            if isinstance(raw, TarSample):
                parsed, _ = parse_sample(raw.members)
                captions.extend(parsed.captions if parsed is not None else ())
            if len(captions) >= limit:
                return captions[:limit]
    return captions
