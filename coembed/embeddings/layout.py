"""The files of a ``coembed embed`` output folder, and when a partition of it counts as finished.

Layout (clip-retrieval's, plus a plan and completion markers)::

    OUT/_plan.json                      the partitions: same on every worker, checked by every run
    OUT/img_emb/img_emb_{p}.npy         (rows, D) float32, unit norm
    OUT/metadata/metadata_{p}.jsonl     one {"image_path": rel, "sha256", "size", "mtime_ns", "width", "height"} per row
    OUT/done/part_{p:05d}.json          written last: rows, hashes of the two files above, the model

A partition is finished only when its marker exists, names the plan's partition and model, and the
``.npy`` and metadata bytes still hash to what it records; anything else is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coembed.errors import ConfigError, DataError
from coembed.io import atomic_write_json

if TYPE_CHECKING:
    from coembed.search.store import ModelIdentity

PLAN_FILE = "_plan.json"
PLAN_VERSION = 1


def npy_path(out: Path, p: int) -> Path:
    return out / "img_emb" / f"img_emb_{p}.npy"


def metadata_path(out: Path, p: int) -> Path:
    return out / "metadata" / f"metadata_{p}.jsonl"


def marker_path(out: Path, p: int) -> Path:
    return out / "done" / f"part_{p:05d}.json"


def partition_names(partitions: list[int], limit: int = 20) -> str:
    """``part_00003, part_00007`` (the marker names), the first ``limit`` of them."""
    names = ", ".join(f"part_{p:05d}" for p in partitions[:limit])
    return names + (f" and {len(partitions) - limit} more" if len(partitions) > limit else "")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def paths_digest(paths: list[str]) -> str:
    """SHA-256 of a path list (NUL-separated: the one byte a POSIX path cannot hold)."""
    return digest("\0".join(paths).encode("utf-8", "surrogateescape"))


def file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes, or None when it cannot be read."""
    from coembed.search.store import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return None


@dataclass(frozen=True, kw_only=True)
class Partition:
    """One output file pair: ``count`` consecutive images of the sorted list, ``first`` to ``last``."""

    index: int
    first: str
    last: str
    count: int
    sha256: str  # of its path list


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How the images are split into partitions, and by which model they are embedded."""

    images_root: str
    shard_size: int
    count: int
    paths_sha256: str
    model_path: str
    model_sha256: str
    embed_dim: int
    partitions: tuple[Partition, ...]
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"partitions": [asdict(p) for p in self.partitions]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path) -> Plan:
        try:
            parts = tuple(Partition(**p) for p in data["partitions"])
            return cls(**{**data, "partitions": parts})
        except (KeyError, TypeError) as e:
            raise DataError(f"{source} is not a coembed embedding plan ({type(e).__name__}: {e})") from None

    def model_identity(self) -> ModelIdentity:
        from coembed.search.store import ModelIdentity

        return ModelIdentity(self.model_path, self.model_sha256, self.embed_dim)


def split(paths: list[str], shard_size: int) -> list[list[str]]:
    """Consecutive chunks of ``shard_size`` paths (the last one shorter)."""
    return [paths[i : i + shard_size] for i in range(0, len(paths), shard_size)]


def make_plan(root: Path, paths: list[str], shard_size: int, model: ModelIdentity) -> Plan:
    """The plan of embedding ``paths`` (relative to ``root``, sorted) with ``model``."""
    parts = tuple(Partition(index=i, first=chunk[0], last=chunk[-1], count=len(chunk), sha256=paths_digest(chunk))
                  for i, chunk in enumerate(split(paths, shard_size)))
    return Plan(images_root=str(root.resolve()), shard_size=shard_size, count=len(paths), paths_sha256=paths_digest(paths),
                model_path=model.path, model_sha256=model.sha256, embed_dim=model.embed_dim, partitions=parts)


def read_plan(out: Path) -> Plan:
    """The plan in ``out``.

    Raises:
        DataError: no plan (not the output of ``coembed embed``) or an unreadable one.
    """
    path = out / PLAN_FILE
    if not path.is_file():
        raise DataError(f"{out} holds no {PLAN_FILE}: not an output folder of `coembed embed` (or one from an older coembed; rerun it)")
    return Plan.from_dict(_read_json(path), path)


def ensure_plan(out: Path, plan: Plan) -> Plan:
    """Create ``out/_plan.json`` from ``plan``, or check that the one there describes the same work.

    Creation is atomic and exclusive (a complete temporary file hard-linked into place), so of two
    workers racing, one writes and the other compares; neither overwrites the file.

    Raises:
        ConfigError: the existing plan has other images, shard size or model.
    """
    path = out / PLAN_FILE
    if not path.exists():
        _create_exclusive(path, json.dumps(plan.to_dict(), indent=2, ensure_ascii=False) + "\n")
    existing = read_plan(out)
    differences = plan_differences(existing, plan)
    if differences:
        raise ConfigError(f"{path} describes other work: {'; '.join(differences)}. Outputs of different runs must not mix: "
                          f"use another --out, or delete {out} to start over")
    return existing


def plan_differences(old: Plan, new: Plan) -> list[str]:
    """Human descriptions of what differs between two plans.

    ``images_root`` and ``model_path`` are not compared: another node may mount the images
    elsewhere, and a copied checkpoint keeps its weights (the file the first worker wrote wins).
    """
    names = {"shard_size": "--shard-size", "count": "number of images", "paths_sha256": "image list",
             "model_sha256": "checkpoint weights", "embed_dim": "embedding size", "version": "plan version"}
    old_d, new_d = old.to_dict(), new.to_dict()
    diffs = [f"{label} {old_d[key]!r} there, {new_d[key]!r} now" for key, label in names.items() if old_d[key] != new_d[key]]
    if not diffs and old_d["partitions"] != new_d["partitions"]:
        diffs.append("partitions")
    return diffs


def _create_exclusive(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` unless it exists; readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        # backslashreplace: a non-UTF-8 image name becomes the JSON escape \udcXX (read back as the same str)
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        pass  # another worker was first: the caller compares its plan with ours
    except OSError as e:
        if e.filename is None:  # a failed write() names no file (a full disk): name the target
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


@dataclass(frozen=True, kw_only=True)
class Marker:
    """The completion record of one partition (``OUT/done/part_{p:05d}.json``)."""

    partition: int
    rows: int
    skipped: int
    npy_sha256: str
    metadata_sha256: str
    paths_sha256: str
    model_path: str
    model_sha256: str
    shard: int
    num_shards: int
    seconds: float
    skipped_by_reason: dict[str, int] = field(default_factory=dict)


def write_marker(out: Path, marker: Marker) -> None:
    atomic_write_json(marker_path(out, marker.partition), asdict(marker))


def read_marker(out: Path, p: int) -> Marker | None:
    """The marker of partition ``p``, or None when it is missing or unreadable (so: unfinished)."""
    try:
        return Marker(**json.loads(marker_path(out, p).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def finished_marker(out: Path, plan: Plan, p: int) -> Marker | None:
    """The marker of partition ``p`` if the partition is finished (see the module docstring), else None."""
    marker = read_marker(out, p)
    if marker is None or marker.partition != p:
        return None
    if (marker.paths_sha256, marker.model_sha256) != (plan.partitions[p].sha256, plan.model_sha256):
        return None
    if file_digest(npy_path(out, p)) != marker.npy_sha256:
        return None
    return marker if file_digest(metadata_path(out, p)) == marker.metadata_sha256 else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object")
    return data
