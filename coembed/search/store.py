"""The search store: SQLite for metadata and vectors, a FAISS index derived from it.

SQLite (WAL mode, ``synchronous=FULL``) is the single source of truth. Each indexed *content*
(identified by the SHA-256 of the file bytes) has one row in ``vectors`` with its float32 embedding
as a blob and its pixel dimensions; each *file* has one row in ``files`` (path, size, mtime, hash,
soft-delete flag, the vector it uses, or the reason it could not be indexed). Renamed and duplicate
files point at the same vector row, so they are never embedded twice.

Why vectors live in SQLite and not only in the FAISS file: one transaction commits a batch's files
and vectors together, so a ``kill -9`` at any moment leaves either the whole batch or none of it.
The FAISS index (``<db>.faiss``) is a cache stamped with the store's *generation* (a counter bumped
by every commit that changes the searchable set) and the ids it holds; when its stamp differs from
the database's, the ids that changed are added or removed from the blobs (or, when that is not
possible, it is rebuilt). It can therefore never disagree with the metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coembed.errors import CheckpointError, ConfigError, DataError
from coembed.search.vectors import IndexConfig, VectorIndex

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    deleted INTEGER NOT NULL DEFAULT 0,
    vector_id INTEGER REFERENCES vectors(id),
    error TEXT
);
CREATE INDEX IF NOT EXISTS files_vector ON files(vector_id);
"""
_LIVE_VECTORS = (
    "SELECT v.id, v.vector FROM vectors v WHERE EXISTS "
    "(SELECT 1 FROM files f WHERE f.vector_id = v.id AND f.deleted = 0) ORDER BY v.id"
)


@dataclass(frozen=True)
class FileRow:
    """One indexed file. ``vector_id`` is None for a file that could not be indexed (``error``)."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    deleted: bool
    vector_id: int | None
    error: str | None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class FileUpdate:
    """A file row to insert or replace in a batch (``path`` is the key)."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None = None
    vector_id: int | None = None  # an existing vector; or set ``new_vector`` instead
    new_vector: str | None = None  # sha256 of a vector added in the same batch
    error: str | None = None


@dataclass(frozen=True)
class NewVector:
    sha256: str
    width: int
    height: int
    vector: np.ndarray  # (D,) float32, unit norm


@dataclass(frozen=True)
class ModelIdentity:
    """Which checkpoint made a store's vectors: its folder and the SHA-256 of its weights."""

    path: str
    sha256: str
    embed_dim: int


def checkpoint_identity(path: str | os.PathLike, embed_dim: int) -> ModelIdentity:
    """Identify a checkpoint by the hash of its weights (a moved checkpoint keeps its identity): a
    coembed folder, an OpenCLIP / OpenAI state-dict file or folder, or a Hugging Face folder."""
    weights = weights_file(path)
    where = weights if Path(path).is_file() else weights.parent
    return ModelIdentity(str(where.resolve()), file_sha256(weights), embed_dim)


def weights_file(path: str | os.PathLike) -> Path:
    """The file holding a checkpoint's weights, for any format :func:`coembed.load` reads."""
    from coembed.checkpoint import MODEL_FILE, resolve
    from coembed.interop.hf import WEIGHTS as HF_WEIGHTS
    from coembed.interop.openclip import WEIGHT_FILES
    from coembed.loading import detect_format

    path = Path(path)
    if path.is_file():
        return path
    fmt = detect_format(path)
    if fmt == "coembed":
        return resolve(path) / MODEL_FILE
    candidates = [path / HF_WEIGHTS] if fmt == "hf" else [path / name for name in WEIGHT_FILES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"{path}: no weights file found (looked for {', '.join(c.name for c in candidates)})")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Store:
    """An open search store. Thread-safe: one connection guarded by a lock (SQLite work is short)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn, self.path = conn, path
        self._lock = threading.RLock()
        self._index: VectorIndex | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, *, create: bool = False) -> Store:
        """Open the store at ``path``; with ``create`` a missing one is made.

        Raises:
            DataError: no store at ``path`` (and not ``create``), or it is not a coembed store.
        """
        path = Path(path)
        if not create and not path.is_file():
            raise DataError(f"no search index at {path}; build one with `coembed index DIR --checkpoint CKPT --db {path}`")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a commit survives a crash of the process and the machine
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(_SCHEMA)
        except sqlite3.OperationalError as e:  # a full disk or read-only folder, not a foreign file
            raise DataError(f"cannot open the search index {path} for writing ({e}; is the disk full or read-only?)") from None
        except sqlite3.DatabaseError as e:
            raise DataError(f"{path} is not a coembed search index ({e})") from None
        store = cls(conn, path)
        store._check_schema()
        return store

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_schema(self) -> None:
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        elif version != str(SCHEMA_VERSION):
            raise DataError(f"{self.path} has index schema version {version}; this coembed reads version {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # ------------------------------------------------------------------ meta
    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    def model(self) -> ModelIdentity | None:
        raw = self.get_meta("model")
        return ModelIdentity(**json.loads(raw)) if raw else None

    def bind_model(self, identity: ModelIdentity) -> None:
        """Record the checkpoint of a new store, or check that it is the one already recorded.

        Raises:
            ConfigError: the store holds vectors of another checkpoint.
        """
        known = self.model()
        if known is None:
            self.set_meta("model", json.dumps(identity.__dict__))
        elif known.sha256 != identity.sha256 or known.embed_dim != identity.embed_dim:
            raise ConfigError(
                f"{self.path} was built with checkpoint {known.path} (weights sha256 {known.sha256[:12]}), "
                f"not {identity.path} ({identity.sha256[:12]}); its vectors are not comparable: use another --db"
            )

    def index_config(self) -> IndexConfig:
        raw = self.get_meta("index_config")
        return IndexConfig(**json.loads(raw)) if raw else IndexConfig()

    def set_index_config(self, cfg: IndexConfig) -> None:
        self.set_meta("index_config", json.dumps(cfg.to_dict()))
        self._index = None

    # ------------------------------------------------------------------ files
    def lookup(self, path: str) -> FileRow | None:
        rows = self._query(_FILE_SELECT + " WHERE f.path = ?", (_db_path(path),))
        return _file_row(rows[0]) if rows else None

    def file(self, file_id: int) -> FileRow | None:
        rows = self._query(_FILE_SELECT + " WHERE f.id = ?", (file_id,))
        return _file_row(rows[0]) if rows else None

    def vector_id_for(self, sha256: str) -> int | None:
        rows = self._query("SELECT id FROM vectors WHERE sha256 = ?", (sha256,))
        return rows[0][0] if rows else None

    def live_paths_under(self, root: str) -> list[str]:
        """Paths of live (not soft-deleted) files at or below the folder ``root``."""
        prefix = root.rstrip("/") + "/"
        raw = os.fsencode(prefix)  # non-UTF-8 paths are stored as their bytes (see _db_path)
        rows = self._query("SELECT path FROM files WHERE deleted = 0 AND (substr(path, 1, ?) = ? OR "
                           "(typeof(path) = 'blob' AND substr(path, 1, ?) = ?))", (len(prefix), _db_path(prefix), len(raw), raw))
        return [_path_from_db(r[0]) for r in rows]

    def files_for_vectors(self, vector_ids: Iterable[int]) -> dict[int, list[FileRow]]:
        """Live files using each vector id, sorted by path."""
        ids = sorted({int(v) for v in vector_ids})
        out: dict[int, list[FileRow]] = {}
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._query(_FILE_SELECT + f" WHERE f.deleted = 0 AND f.vector_id IN ({marks}) ORDER BY f.path", chunk):
                out.setdefault(row[6], []).append(_file_row(row))
        return out

    def vector(self, vector_id: int) -> np.ndarray | None:
        rows = self._query("SELECT vector FROM vectors WHERE id = ?", (vector_id,))
        return np.frombuffer(rows[0][0], dtype=np.float32).copy() if rows else None

    def counts(self) -> dict[str, int]:
        """Live files, soft-deleted files, files that failed, and distinct vectors."""
        (live, deleted, failed), = self._query(
            "SELECT COALESCE(SUM(deleted = 0 AND vector_id IS NOT NULL), 0), COALESCE(SUM(deleted = 1), 0), "
            "COALESCE(SUM(deleted = 0 AND error IS NOT NULL), 0) FROM files"
        )
        (vectors,), = self._query("SELECT COUNT(*) FROM vectors")
        return {"files": live, "deleted": deleted, "failed": failed, "vectors": vectors}

    # ------------------------------------------------------------------ writing
    def commit_batch(self, vectors: Sequence[NewVector], files: Sequence[FileUpdate]) -> dict[str, int]:
        """Add ``vectors`` and upsert ``files`` in one transaction; returns sha256 -> new vector id."""
        with self._transaction() as conn:
            ids = {v.sha256: self._insert_vector(conn, v) for v in vectors}
            for f in files:
                vector_id = ids[f.new_vector] if f.new_vector is not None else f.vector_id
                conn.execute(
                    "INSERT INTO files(path, size, mtime_ns, sha256, deleted, vector_id, error) VALUES (?, ?, ?, ?, 0, ?, ?) "
                    "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
                    "sha256 = excluded.sha256, deleted = 0, vector_id = excluded.vector_id, error = excluded.error",
                    (_db_path(f.path), f.size, f.mtime_ns, f.sha256, vector_id, _db_text(f.error)),
                )
            if files:
                _bump_generation(conn)
        return ids

    @staticmethod
    def _insert_vector(conn: sqlite3.Connection, v: NewVector) -> int:
        blob = np.ascontiguousarray(v.vector, dtype=np.float32).tobytes()
        cur = conn.execute("INSERT INTO vectors(sha256, width, height, vector) VALUES (?, ?, ?, ?)", (v.sha256, v.width, v.height, blob))
        return int(cur.lastrowid)

    def soft_delete(self, paths: Sequence[str]) -> None:
        with self._transaction() as conn:
            conn.executemany("UPDATE files SET deleted = 1 WHERE path = ?", [(_db_path(p),) for p in paths])
            if paths:
                _bump_generation(conn)

    # ------------------------------------------------------------------ vectors
    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N,) int64, vectors (N, D) float32) of every vector used by a live file."""
        rows = self._query(_LIVE_VECTORS)
        dim = self.model().embed_dim if self.model() else 0
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return ids, vecs

    @property
    def index_path(self) -> Path:
        return self.path.with_name(self.path.name + ".faiss")

    def vector_index(self) -> VectorIndex:
        """The FAISS index of the live vectors, current with the database.

        Loaded from ``<db>.faiss``; if that is older than the database, only the vectors that
        changed since are added and removed (a full rebuild only when the index kind must change,
        HNSW must drop vectors, or the file is missing or damaged); then saved. Kept in memory
        until the generation changes.
        """
        generation = self.generation
        with self._lock:
            if self._index is not None and self._index.generation == generation:
                return self._index
            cfg = self.index_config()
            # A fresh copy from disk, never the in-memory index: other threads may be searching it.
            index = VectorIndex.load(self.index_path, cfg)
            if index is None or index.generation != generation or index.kind != cfg.kind_for(index.size):
                index = self._refresh(index, generation, cfg)
                index.save(self.index_path)
            self._index = index
            return index

    def _refresh(self, index: VectorIndex | None, generation: int, cfg: IndexConfig) -> VectorIndex:
        live = np.fromiter((r[0] for r in self._query(_LIVE_VECTORS.replace("v.id, v.vector", "v.id"))), dtype=np.int64)
        if index is not None:
            added, removed = np.setdiff1d(live, index.ids), np.setdiff1d(index.ids, live)
            if index.can_update(len(live), len(removed), cfg):
                index.update(added, self._vectors(added), removed, generation)
                return index
        ids, vecs = self.live_vectors()
        return VectorIndex.build(ids, vecs, cfg, generation)

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), D) vectors of ``ids``, in that order."""
        dim = self.model().embed_dim
        found: dict[int, bytes] = {}
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start : start + 500]]
            found.update(self._query(f"SELECT id, vector FROM vectors WHERE id IN ({','.join('?' * len(chunk))})", chunk))
        return np.frombuffer(b"".join(found[int(i)] for i in ids), dtype=np.float32).reshape(len(ids), dim)


def _bump_generation(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('generation', '1') "
        "ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
    )


_FILE_SELECT = (
    "SELECT f.id, f.path, f.size, f.mtime_ns, f.sha256, f.deleted, f.vector_id, f.error, v.width, v.height "
    "FROM files f LEFT JOIN vectors v ON v.id = f.vector_id"
)


def _file_row(row: tuple) -> FileRow:
    return FileRow(row[0], _path_from_db(row[1]), row[2], row[3], row[4], bool(row[5]), row[6], row[7], row[8], row[9])


def _db_path(path: str) -> str | bytes:
    """A path as SQLite keeps it: UTF-8 text, or for a name that is not UTF-8 (a str with lone
    surrogates, which SQLite text cannot hold) its exact bytes as a BLOB, so it reads back unchanged."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _path_from_db(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _db_text(text: str | None) -> str | None:
    """Free text (an error reason) as valid UTF-8: lone surrogates become \\udcXX escapes."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")
