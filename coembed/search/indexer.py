"""Incremental, resumable indexing of a folder of images into a :class:`~coembed.search.store.Store`.

Per file, cheapest test first:

1. same path, size and mtime as a live row -> unchanged, nothing read;
2. content hash already has a vector (a rename, a copy, or a file touched without change) -> the
   row points at that vector, nothing decoded;
3. otherwise the image is decoded (with a pixel limit against decompression bombs) and embedded.

Files that cannot be used are recorded with their reason, so an unchanged bad file is not retried;
every run lists them. Work is committed in batches (files and vectors in one transaction): a run
killed at any point keeps every finished batch, and the next run skips those files by rule 1.
Live files under the folder that no longer exist are soft-deleted at the end of a run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from coembed.data.datasets import SkipReport, iter_images
from coembed.errors import DataError
from coembed.loading import Loaded
from coembed.search.checks import require_ints
from coembed.search.store import FileUpdate, NewVector, Store, file_sha256
from coembed.transforms import ImageLoadError, load_image, os_error_reason


@dataclass(kw_only=True)
class IndexerConfig:
    """Settings of one indexing run.

    Attributes:
        batch_size: images embedded (and committed) together.
        max_pixels: largest ``width * height`` decoded; bigger images are skipped as bombs.
        progress: show a progress bar (images/s) on stderr.
    """

    batch_size: int = 64
    max_pixels: int = 50_000_000
    progress: bool = True

    def __post_init__(self) -> None:
        require_ints(self, ("batch_size", "max_pixels"))


@dataclass
class IndexReport:
    """What a run did. ``embedded`` images were decoded and encoded; ``reused`` got an existing vector."""

    root: str
    found: int = 0
    unchanged: int = 0
    embedded: int = 0
    reused: int = 0
    deleted: int = 0
    skipped: SkipReport = field(default_factory=SkipReport)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"root": self.root, "found": self.found, "unchanged": self.unchanged, "embedded": self.embedded,
                "reused": self.reused, "deleted": self.deleted, "skipped": self.skipped.total,
                "skipped_by_reason": dict(self.skipped.by_reason),
                "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped.examples],
                "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 1)}


class _Batch:
    """Pending work of one transaction: decoded images to embed and file rows to write."""

    def __init__(self) -> None:
        self.pixels: list[torch.Tensor] = []
        self.new: list[tuple[str, int, int]] = []  # (sha256, width, height), row-aligned with pixels
        self.files: list[FileUpdate] = []

    def pending_sha(self, sha: str) -> bool:
        return any(s == sha for s, _, _ in self.new)

    def __len__(self) -> int:
        return len(self.files)


class Indexer:
    """Index folders into ``store`` with the model of ``loaded``."""

    def __init__(self, store: Store, loaded: Loaded, cfg: IndexerConfig | None = None,
                 on_commit: Callable[[int], None] | None = None) -> None:
        self.store, self.loaded, self.cfg = store, loaded, cfg or IndexerConfig()
        self.on_commit = on_commit  # called with the number of file rows after each committed batch

    def run(self, root: str | os.PathLike) -> IndexReport:
        """Index every image under ``root``; see the module docstring for the rules."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root} is not a folder" if root.exists() else f"folder {root} does not exist")
        root = root.resolve()
        start, report = time.perf_counter(), IndexReport(str(root))
        paths = [str(root / rel) for rel in iter_images(root)]
        report.found = len(paths)
        batch = _Batch()
        for path in self._progress(paths):
            self._visit(path, batch, report)
            if len(batch.pixels) >= self.cfg.batch_size or len(batch) >= 8 * self.cfg.batch_size:
                batch = self._flush(batch)
        self._flush(batch)
        self._soft_delete_vanished(str(root), set(paths), report)
        self.store.vector_index()  # bring the FAISS file up to date for the next search
        report.seconds = time.perf_counter() - start
        return report

    def _progress(self, paths: list[str]):
        if not self.cfg.progress:
            return paths
        from tqdm.auto import tqdm

        return tqdm(paths, desc="index", unit="img", dynamic_ncols=True, smoothing=0.1)

    def _visit(self, path: str, batch: _Batch, report: IndexReport) -> None:
        try:
            st = os.stat(path)
        except OSError as e:
            report.skipped.add(path, os_error_reason(path, e))
            return
        row = self.store.lookup(path)
        if row is not None and not row.deleted and (row.size, row.mtime_ns) == (st.st_size, st.st_mtime_ns):
            report.unchanged += 1
            if row.error:
                report.skipped.add(path, row.error)
            return
        try:
            sha = file_sha256(path)
        except OSError as e:
            report.skipped.add(path, os_error_reason(path, e))
            return
        self._add(path, st, sha, batch, report)

    def _add(self, path: str, st: os.stat_result, sha: str, batch: _Batch, report: IndexReport) -> None:
        update = FileUpdate(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha)
        vector_id = self.store.vector_id_for(sha)
        if vector_id is not None or batch.pending_sha(sha):
            batch.files.append(_with(update, vector_id=vector_id, new_vector=None if vector_id else sha))
            report.reused += 1
            return
        try:
            image = load_image(path, max_pixels=self.cfg.max_pixels)
        except ImageLoadError as e:
            batch.files.append(_with(update, error=e.reason))
            report.skipped.add(path, e.reason)
            return
        batch.pixels.append(self.loaded.preprocess(image))
        batch.new.append((sha, *image.size))
        batch.files.append(_with(update, new_vector=sha))
        report.embedded += 1

    def _flush(self, batch: _Batch) -> _Batch:
        if not len(batch):
            return batch
        vectors = self._embed(batch.pixels)
        new = [NewVector(sha, w, h, vec) for (sha, w, h), vec in zip(batch.new, vectors)]
        self.store.commit_batch(new, batch.files)
        if self.on_commit:
            self.on_commit(len(batch.files))
        return _Batch()

    @torch.no_grad()
    def _embed(self, pixels: list[torch.Tensor]) -> np.ndarray:
        if not pixels:
            return np.zeros((0, 0), np.float32)
        model = self.loaded.model
        device = next(model.parameters()).device
        return model.encode_image(torch.stack(pixels).to(device), normalize=True).float().cpu().numpy()

    def _soft_delete_vanished(self, root: str, seen: set[str], report: IndexReport) -> None:
        gone = [p for p in self.store.live_paths_under(root) if p not in seen]
        self.store.soft_delete(gone)
        report.deleted = len(gone)


def _with(update: FileUpdate, **changes) -> FileUpdate:
    from dataclasses import replace

    return replace(update, **changes)


def index_folder(db: str | os.PathLike, folder: str | os.PathLike, checkpoint: str | os.PathLike,
                 cfg: IndexerConfig | None = None, on_commit: Callable[[int], None] | None = None, *,
                 quick_gelu: bool | None = None) -> IndexReport:
    """Open (or create) the store at ``db``, bind it to ``checkpoint`` and index ``folder``.

    Raises:
        ConfigError: the store was built with another checkpoint.
        DataError / CheckpointError: a missing folder, store or checkpoint.
    """
    from coembed.loading import load
    from coembed.search.store import checkpoint_identity

    folder = Path(folder)
    if not folder.is_dir():  # before loading a model or creating a store
        raise DataError(f"{folder} is not a folder" if folder.exists() else f"folder {folder} does not exist")
    loaded = load(checkpoint, quick_gelu=quick_gelu)
    identity = checkpoint_identity(checkpoint, loaded.model.cfg.embed_dim)
    with Store.open(db, create=True) as store:
        store.bind_model(identity)
        return Indexer(store, loaded, cfg, on_commit).run(folder)
