"""One worker's share of embedding a folder: the partitions ``p`` with ``p % num_shards == shard``.

Every worker lists and sorts the same images, so all cut the same partitions; the shared
``_plan.json`` makes that checked rather than assumed. Per partition, the ``.npy`` and metadata are
written atomically and then the completion marker; a rerun (after a kill, or on a node that
failed) redoes exactly the owned partitions that are not finished.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from coembed.data.datasets import SkipReport
from coembed.embeddings.layout import (Marker, Plan, digest, ensure_plan, finished_marker, make_plan, marker_path,
                                       metadata_path, npy_path, split, write_marker)
from coembed.eval.features import embed_images
from coembed.io import atomic_write_bytes
from coembed.loading import Loaded
from coembed.search.checks import require_ints

if TYPE_CHECKING:
    from coembed.search.store import ModelIdentity

_EXIF_ORIENTATION = 0x0112
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(kw_only=True)
class EmbedConfig:
    """Settings of one worker.

    Attributes:
        shard: this worker's number, ``0 <= shard < num_shards``.
        num_shards: how many workers share the partitions.
        shard_size: images per partition (the same on every worker and every rerun).
        batch_size: images encoded together.
        workers: DataLoader processes decoding images.
        progress: show a progress bar (images/s) on stderr.
    """

    shard: int = 0
    num_shards: int = 1
    shard_size: int = 10_000
    batch_size: int = 128
    workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        require_ints(self, ("num_shards", "shard_size", "batch_size"))
        require_ints(self, ("shard", "workers"), minimum=0)
        if self.shard >= self.num_shards:
            raise ValueError(f"shard must be below num_shards={self.num_shards}, got {self.shard}")

    def owns(self, partition: int) -> bool:
        return partition % self.num_shards == self.shard


@dataclass
class EmbedReport:
    """What one worker's run did; ``embedded`` and ``skipped`` count this run's images only."""

    out: str
    shard: int
    num_shards: int
    images: int
    partitions: int
    done_now: int = 0
    already_done: int = 0
    other_workers: int = 0
    embedded: int = 0
    skipped: SkipReport = field(default_factory=SkipReport)
    skipped_earlier: int = 0  # images skipped in owned partitions that earlier runs finished
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"out": self.out, "shard": self.shard, "num_shards": self.num_shards, "images": self.images,
                "shards": self.partitions, "partitions_done_now": self.done_now,
                "partitions_already_done": self.already_done, "partitions_other_workers": self.other_workers,
                "embedded_now": self.embedded, "skipped": self.skipped.total, "skipped_by_reason": dict(self.skipped.by_reason),
                "skipped_earlier": self.skipped_earlier, "seconds": round(self.seconds, 1)}


@dataclass(frozen=True)
class _Job:
    """What every partition of a run shares."""

    loaded: Loaded
    model_path: str
    root: Path
    out: Path
    plan: Plan
    cfg: EmbedConfig


def embed_partitions(loaded: Loaded, identity: ModelIdentity, root: str | os.PathLike, paths: list[str], out: str | os.PathLike,
                     cfg: EmbedConfig) -> EmbedReport:
    """Embed this worker's unfinished partitions of ``paths`` (relative to ``root``) into ``out``.

    Args:
        loaded: the model, as :func:`coembed.load` returns it.
        identity: the checkpoint's identity (weights hash), recorded in the plan and the markers.

    Raises:
        ConfigError: ``out`` holds the plan of other images, another shard size or another checkpoint.
    """
    root, out, start = Path(root), Path(out), time.perf_counter()
    paths = sorted(paths)  # the same order on every worker, whatever the file system listed
    plan = ensure_plan(out, make_plan(root, paths, cfg.shard_size, identity))
    job = _Job(loaded, identity.path, root, out, plan, cfg)
    report = EmbedReport(str(out), cfg.shard, cfg.num_shards, len(paths), len(plan.partitions))
    todo = _unfinished(job, split(paths, cfg.shard_size), report)
    bar = _progress(sum(len(chunk) for _, chunk in todo), cfg)
    for p, chunk in todo:
        marker, skipped = _embed_partition(job, p, chunk, bar.update)
        report.done_now, report.embedded = report.done_now + 1, report.embedded + marker.rows
        report.skipped.merge(skipped)
    bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _unfinished(job: _Job, chunks: list[list[str]], report: EmbedReport) -> list[tuple[int, list[str]]]:
    """The owned partitions still to do, counting the others into ``report``."""
    todo = []
    for p, chunk in enumerate(chunks):
        if not job.cfg.owns(p):
            report.other_workers += 1
        elif (marker := finished_marker(job.out, job.plan, p)) is not None:
            report.already_done += 1
            report.skipped_earlier += marker.skipped
        else:
            todo.append((p, chunk))
    return todo


def _progress(total: int, cfg: EmbedConfig):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"embed {cfg.shard}/{cfg.num_shards}", unit="img", dynamic_ncols=True,
                smoothing=0.1, disable=not cfg.progress or total == 0)


def _embed_partition(job: _Job, p: int, chunk: list[str], on_batch: Callable[[int], object]) -> tuple[Marker, SkipReport]:
    start = time.perf_counter()
    marker_path(job.out, p).unlink(missing_ok=True)  # the files it vouched for are about to change
    infos = [file_info(job.root / rel) for rel in chunk]  # before decoding: a later change shows as a newer mtime
    emb, kept, skipped = embed_images(job.loaded.model, job.root, chunk, job.loaded.preprocess,
                                      batch_size=job.cfg.batch_size, workers=job.cfg.workers, on_batch=on_batch)
    npy = _npy_bytes(emb)
    meta = "".join(json.dumps({"image_path": chunk[k], **infos[k]}) + "\n" for k in kept).encode("utf-8")
    atomic_write_bytes(npy_path(job.out, p), npy)
    atomic_write_bytes(metadata_path(job.out, p), meta)
    marker = Marker(partition=p, rows=len(kept), skipped=skipped.total, skipped_by_reason=dict(skipped.by_reason),
                    npy_sha256=digest(npy), metadata_sha256=digest(meta), paths_sha256=job.plan.partitions[p].sha256,
                    model_path=job.model_path, model_sha256=job.plan.model_sha256, shard=job.cfg.shard,
                    num_shards=job.cfg.num_shards, seconds=round(time.perf_counter() - start, 3))
    write_marker(job.out, marker)
    return marker, skipped


def _npy_bytes(emb: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, emb.numpy().astype(np.float32))
    return buf.getvalue()


def file_info(path: Path) -> dict:
    """What the search store keys a file by: content hash, size, mtime, and its pixel size (None when unreadable)."""
    from coembed.search.store import file_sha256

    try:
        st, sha = os.stat(path), file_sha256(path)
    except OSError:
        return {"sha256": None, "size": None, "mtime_ns": None, "width": None, "height": None}
    return {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns, **_pixel_size(path)}


def _pixel_size(path: Path) -> dict:
    """Width and height as :func:`coembed.transforms.load_image` returns the image (EXIF rotation
    applied), read from the header without decoding pixels."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(_EXIF_ORIENTATION) in _ROTATED:
                width, height = height, width
    except Exception:  # noqa: BLE001 - an undecodable file is skipped by the embedding anyway
        return {"width": None, "height": None}
    return {"width": width, "height": height}
