"""The FAISS side of the store: an inner-product index over unit vectors, keyed by vector id.

Up to ``exact_threshold`` vectors the index is exact (``IndexIDMap(IndexFlatIP)``); above it an
approximate one: HNSW (default; no training, good recall at low latency) or IVF-Flat (faster to
build, trained on the data). The index file starts with a header holding the store generation it
was built at and the ids it holds, and is replaced atomically (temp file + rename), so a reader sees
either the previous complete index or the new one, can tell whether it is current, and can bring a
stale one up to date by adding and removing only the ids that changed.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from coembed.io import atomic_write_bytes
from coembed.search.checks import require_ints

_MAGIC = b"COEMBIDX"
_HEADER = struct.Struct("<8sQQ")  # magic, generation, number of ids
APPROXIMATE_KINDS = ("hnsw", "ivf")
HNSW_MAX_STALE = 0.1  # fraction of stale vectors an HNSW index keeps before it is rebuilt


@dataclass(kw_only=True)
class IndexConfig:
    """Which FAISS index to use and its search-time knobs.

    Attributes:
        exact_threshold: largest vector count searched exactly.
        approximate: ``"hnsw"`` or ``"ivf"`` above the threshold.
        hnsw_m: HNSW graph degree.
        hnsw_ef_construction: HNSW build-time beam width.
        hnsw_ef_search: HNSW search-time beam width (recall vs latency).
        ivf_nlist: IVF cell count; 0 means ``4 * sqrt(N)``.
        ivf_nprobe: IVF cells visited per query.
    """

    exact_threshold: int = 100_000
    approximate: str = "hnsw"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 256
    ivf_nlist: int = 0
    ivf_nprobe: int = 64

    def __post_init__(self) -> None:
        if self.approximate not in APPROXIMATE_KINDS:
            raise ValueError(f"approximate must be one of {APPROXIMATE_KINDS}, got {self.approximate!r}")
        require_ints(self, ("exact_threshold", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nprobe"))
        require_ints(self, ("ivf_nlist",), minimum=0)

    def kind_for(self, n: int) -> str:
        return "flat" if n <= self.exact_threshold else self.approximate

    def to_dict(self) -> dict:
        return asdict(self)


class VectorIndex:
    """A FAISS index plus the store generation it reflects."""

    def __init__(self, index, generation: int, kind: str, ids: np.ndarray) -> None:
        self.index, self.generation, self.kind = index, generation, kind
        self.ids = np.sort(np.asarray(ids, dtype=np.int64))  # the vector ids it holds

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, cfg: IndexConfig, generation: int) -> VectorIndex:
        """Index ``vectors`` (N, D) float32 under ``ids`` (N,) int64."""
        import faiss

        n, dim = vectors.shape
        kind = cfg.kind_for(n)
        if kind == "flat":
            index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
        elif kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = cfg.hnsw_ef_construction
            index = faiss.IndexIDMap(hnsw)
        else:
            nlist = cfg.ivf_nlist or max(1, int(4 * math.sqrt(n)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = vectors[np.random.default_rng(0).permutation(n)[: nlist * 64]]
            index.train(np.ascontiguousarray(sample))
        if n:
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
        out = cls(index, generation, kind, ids)
        out.configure(cfg)
        return out

    def can_update(self, n_live: int, n_stale: int, cfg: IndexConfig) -> bool:
        """Whether the index can be brought to ``n_live`` vectors in place, ``n_stale`` of its own
        vectors no longer being live, and stay the kind ``cfg`` wants.

        HNSW cannot remove vectors: it keeps stale ones (search skips them, as they have no live
        file) until they are more than :data:`HNSW_MAX_STALE` of the index, then it is rebuilt.
        """
        if cfg.kind_for(n_live) != self.kind:
            return False
        return self.kind != "hnsw" or n_stale <= HNSW_MAX_STALE * (n_live + n_stale)

    def update(self, add_ids: np.ndarray, add_vectors: np.ndarray, remove_ids: np.ndarray, generation: int) -> None:
        """Add and remove vectors in place (HNSW keeps removed ones) and stamp the new generation."""
        add_ids = np.ascontiguousarray(add_ids, dtype=np.int64)
        if len(remove_ids) and self.kind != "hnsw":
            self.index.remove_ids(np.ascontiguousarray(remove_ids, dtype=np.int64))
            self.ids = np.setdiff1d(self.ids, remove_ids, assume_unique=True)
        if len(add_ids):
            self.index.add_with_ids(np.ascontiguousarray(add_vectors, dtype=np.float32), add_ids)
        self.ids = np.sort(np.concatenate([self.ids, add_ids]))
        self.generation = generation

    def configure(self, cfg: IndexConfig) -> None:
        """Apply the search-time parameters (they are not part of the saved index's identity)."""
        import faiss

        inner = faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap) else self.index
        if isinstance(inner, faiss.IndexHNSW):
            inner.hnsw.efSearch = cfg.hnsw_ef_search
        elif isinstance(inner, faiss.IndexIVF):
            inner.nprobe = cfg.ivf_nprobe

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), ids (Q, k)); missing results have id -1."""
        k = max(1, min(k, self.size)) if self.size else 1
        if not self.size:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def save(self, path: str | os.PathLike) -> None:
        import faiss

        payload = faiss.serialize_index(self.index).tobytes()
        atomic_write_bytes(path, _HEADER.pack(_MAGIC, self.generation, len(self.ids)) + self.ids.tobytes() + payload)

    @classmethod
    def load(cls, path: str | os.PathLike, cfg: IndexConfig) -> VectorIndex | None:
        """The saved index (whatever generation it was built at), or None if missing or damaged."""
        import faiss

        try:
            data = Path(path).read_bytes()
            magic, generation, n_ids = _HEADER.unpack_from(data)
            ids = np.frombuffer(data, dtype=np.int64, count=n_ids, offset=_HEADER.size)
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8, offset=_HEADER.size + 8 * n_ids))
        except (OSError, struct.error, ValueError, RuntimeError):  # missing, truncated or foreign: rebuild it
            return None
        if magic != _MAGIC or int(index.ntotal) != n_ids:
            return None
        out = cls(index, generation, _kind_of(index), ids)
        out.configure(cfg)
        return out


def _kind_of(index) -> str:
    import faiss

    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    return "ivf" if isinstance(inner, faiss.IndexIVF) else "flat"
