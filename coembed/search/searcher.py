"""Nearest-neighbour search over a store: vectors in, ranked live files out."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from coembed.errors import CheckpointError, ConfigError, DataError
from coembed.loading import Loaded
from coembed.search.query import parse_query, query_vector
from coembed.search.store import FileRow, Store, checkpoint_identity

MAX_TOP = 1000


@dataclass(frozen=True)
class Hit:
    """One result: an indexed file and its cosine similarity to the query."""

    id: int
    path: str
    score: float
    width: int | None
    height: int | None

    def to_dict(self) -> dict:
        return asdict(self)


class Searcher:
    """Text, image and by-id search of ``store`` with the model that built it."""

    def __init__(self, store: Store, loaded: Loaded, encode_text: Callable[[list[str]], np.ndarray] | None = None) -> None:
        self.store, self.loaded = store, loaded
        self.encode_text = encode_text  # None: encode each query on its own

    def search_vector(self, vector: np.ndarray, top: int, exclude: int | None = None) -> list[Hit]:
        """The ``top`` live files nearest to unit ``vector`` (D,); duplicates of one content tie."""
        if not 1 <= top <= MAX_TOP:
            raise ConfigError(f"top must be between 1 and {MAX_TOP}, got {top}")
        index = self.store.vector_index()
        want = top + (1 if exclude is not None else 0)
        k = want + 8  # a little extra: an HNSW index may still hold vectors of deleted files
        while True:
            scores, ids = index.search(vector[None, :], k)
            files = self.store.files_for_vectors(int(i) for i in ids[0] if i >= 0)
            hits = [_hit(f, float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0 for f in files.get(int(i), [])]
            hits = [h for h in hits if h.id != exclude]
            if len(hits) >= top or k >= index.size:
                return hits[:top]
            k *= 4

    def text(self, expression: str, top: int = 10, images: Sequence = ()) -> list[Hit]:
        """Files matching a query expression (see :mod:`coembed.search.query`), plus optional images."""
        terms = parse_query(expression) if expression and expression.strip() else []
        return self.search_vector(query_vector(self.loaded, terms, images, encode_text=self.encode_text), top)

    def image(self, image, top: int = 10) -> list[Hit]:
        """Files most similar to a PIL image."""
        return self.search_vector(query_vector(self.loaded, [], [image]), top)

    def similar(self, file_id: int, top: int = 10) -> list[Hit]:
        """Files most similar to the indexed file ``file_id`` (itself excluded).

        Raises:
            DataError: no live indexed file with that id.
        """
        row = self.store.file(file_id)
        if row is None or row.deleted or row.vector_id is None:
            raise DataError(f"no indexed image with id {file_id}")
        return self.search_vector(self.store.vector(row.vector_id), top, exclude=file_id)


def _hit(row: FileRow, score: float) -> Hit:
    return Hit(row.id, row.path, round(score, 6), row.width, row.height)


def open_searcher(db: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *, quick_gelu: bool | None = None) -> Searcher:
    """Open the store at ``db`` with the checkpoint recorded in it, or ``checkpoint`` if given
    (``quick_gelu`` as for :func:`coembed.load`: give the value the store was indexed with).

    Raises:
        DataError: no store, or it records no checkpoint and none is given.
        ConfigError: ``checkpoint`` is not the one whose vectors the store holds.
    """
    from coembed.loading import load

    store = Store.open(db)
    known = store.model()
    if known is None:
        raise DataError(f"{db} holds no images yet; run `coembed index DIR --checkpoint CKPT --db {db}`")
    if checkpoint is None:
        try:
            loaded = load(known.path, quick_gelu=quick_gelu)
        except CheckpointError as e:
            raise CheckpointError(f"{e} (the checkpoint recorded in {db}; pass --checkpoint if it moved)") from None
    else:
        loaded = load(checkpoint, quick_gelu=quick_gelu)
    if checkpoint is not None:
        store.bind_model(checkpoint_identity(checkpoint, loaded.model.cfg.embed_dim))  # checks, never rebinds
    return Searcher(store, loaded)
