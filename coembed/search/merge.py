"""Fill a :class:`~coembed.search.store.Store` from the output of ``coembed embed`` (no model run).

Each finished partition is committed in one transaction with the store's own keys: the file's
absolute path (the plan's images root joined with the metadata's ``image_path``, as ``coembed
index`` writes it), size and mtime, and the content hash that identifies its vector. So a rerun
finds every row unchanged and adds nothing, a later ``coembed index`` of the same folder re-embeds
nothing, and duplicate files share one vector. The store is bound to the plan's checkpoint, so its
text queries use the model that made the vectors. Files that changed or vanished since they were
embedded are left out (their vectors would describe other pixels) and counted as ``stale``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from coembed.embeddings.layout import Plan, finished_marker, metadata_path, npy_path, partition_names, read_plan
from coembed.errors import ConfigError, DataError
from coembed.io import read_jsonl
from coembed.search.store import FileUpdate, NewVector, Store


@dataclass
class MergeReport:
    """What a merge did: ``added`` vectors are new to the store, ``reused`` files point at a vector it had."""

    source: str
    partitions: int = 0
    merged: int = 0
    missing: list[int] = field(default_factory=list)
    rows: int = 0
    added: int = 0
    reused: int = 0
    unchanged: int = 0
    stale: int = 0
    stale_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"source": self.source, "partitions": self.partitions, "merged": self.merged, "missing": self.missing,
                "rows": self.rows, "added": self.added, "reused": self.reused, "unchanged": self.unchanged,
                "stale": self.stale, "stale_files": self.stale_examples, "seconds": round(self.seconds, 3)}


def merge_embeddings(db: str | os.PathLike, source: str | os.PathLike, *, allow_partial: bool = False,
                     checkpoint: str | os.PathLike | None = None) -> MergeReport:
    """Insert the vectors and image paths of every finished partition under ``source`` into the store at ``db``.

    Args:
        allow_partial: merge the finished partitions even when others are not finished.
        checkpoint: if given, it must be the checkpoint the embeddings were made with.

    Raises:
        DataError: ``source`` is not an embed output, partitions are unfinished (listed), or files disagree.
        ConfigError: the store, or ``checkpoint``, belongs to another model than the embeddings.
    """
    start, source = time.perf_counter(), Path(source)
    plan = read_plan(source)
    report = MergeReport(str(source), partitions=len(plan.partitions))
    finished = [p.index for p in plan.partitions if finished_marker(source, plan, p.index) is not None]
    report.missing = sorted(set(range(len(plan.partitions))) - set(finished))
    if report.missing and not allow_partial:
        raise DataError(f"{source}: {len(report.missing)} of {len(plan.partitions)} partitions are not finished (no valid "
                        f"marker in done/): {partition_names(report.missing)}; rerun `coembed embed` for them, or pass --allow-partial")
    identity = plan.model_identity()
    if checkpoint is not None:
        _check_checkpoint(checkpoint, plan, source)
    with Store.open(db, create=True) as store:
        store.bind_model(identity)
        for p in finished:
            _merge_partition(store, plan, source, p, report)
        store.vector_index()  # bring the FAISS file up to date for the next search
    report.seconds = time.perf_counter() - start
    return report


def _check_checkpoint(checkpoint: str | os.PathLike, plan: Plan, source: Path) -> None:
    from coembed.search.store import checkpoint_identity

    given = checkpoint_identity(checkpoint, plan.embed_dim)
    if given.sha256 != plan.model_sha256:
        raise ConfigError(f"--checkpoint {checkpoint} (weights sha256 {given.sha256[:12]}) did not make the embeddings "
                          f"in {source}: they come from {plan.model_path} ({plan.model_sha256[:12]})")


def _merge_partition(store: Store, plan: Plan, source: Path, p: int, report: MergeReport) -> None:
    vectors, rows = _read_partition(source, p, plan.embed_dim)
    new: dict[str, NewVector] = {}
    files: list[FileUpdate] = []
    for vector, row in zip(vectors, rows):
        update = _file_update(store, plan, row, report)
        if update is None:
            continue
        if update.new_vector is not None and update.new_vector not in new:
            new[update.new_vector] = NewVector(update.new_vector, row.get("width") or 0, row.get("height") or 0, vector)
        files.append(update)
    store.commit_batch(list(new.values()), files)
    report.merged, report.rows, report.added = report.merged + 1, report.rows + len(rows), report.added + len(new)


def _read_partition(source: Path, p: int, dim: int) -> tuple[np.ndarray, list[dict]]:
    npy, meta = npy_path(source, p), metadata_path(source, p)
    try:
        vectors = np.load(npy, allow_pickle=False)  # never unpickle: an object array is refused here
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{npy} is not a readable float .npy array: {e}") from None
    rows = [row for _, row in read_jsonl(meta)]
    if vectors.ndim != 2 or vectors.shape != (len(rows), dim):
        raise DataError(f"{npy} has shape {vectors.shape}, but {meta} has {len(rows)} rows and the plan's model "
                        f"embeds into {dim} dimensions")
    return vectors.astype(np.float32, copy=False), rows


def _file_update(store: Store, plan: Plan, row: dict, report: MergeReport) -> FileUpdate | None:
    """The store row for one embedded image; None when it is unchanged in the store, or stale."""
    path = str(Path(plan.images_root) / row["image_path"])
    st = _stat_if_as_embedded(path, row)
    if st is None:
        report.stale += 1
        if len(report.stale_examples) < 20:
            report.stale_examples.append(path)
        return None
    known = store.lookup(path)
    if known is not None and not known.deleted and known.vector_id is not None and known.sha256 == row["sha256"] \
            and (known.size, known.mtime_ns) == (st.st_size, st.st_mtime_ns):
        report.unchanged += 1
        return None
    update = FileUpdate(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=row["sha256"])
    vector_id = store.vector_id_for(row["sha256"])
    if vector_id is None:
        return replace(update, new_vector=row["sha256"])
    report.reused += 1
    return replace(update, vector_id=vector_id)


def _stat_if_as_embedded(path: str, row: dict) -> os.stat_result | None:
    """The file's stat when it still has the size and mtime it had when embedded, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    same = row.get("sha256") is not None and (st.st_size, st.st_mtime_ns) == (row.get("size"), row.get("mtime_ns"))
    return st if same else None
