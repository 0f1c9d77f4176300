"""The store and the indexer: incremental runs, renames, duplicates, deletions, bad files, the FAISS cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from coembed.errors import ConfigError
from coembed.search.indexer import Indexer, IndexerConfig, index_folder
from coembed.search.searcher import Searcher
from coembed.search.store import ModelIdentity, Store
from coembed.search.vectors import IndexConfig, VectorIndex
from coembed.transforms import load_image
from tests.helpers import png_header

QUIET = IndexerConfig(batch_size=4, progress=False)


def run_index(store: Store, loaded, folder: Path, cfg: IndexerConfig = QUIET):
    return Indexer(store, loaded, cfg).run(folder)


@pytest.fixture
def store(tmp_path: Path, loaded_tiny) -> Store:
    s = Store.open(tmp_path / "index.db", create=True)
    s.bind_model(ModelIdentity("tiny", "0" * 64, loaded_tiny.model.cfg.embed_dim))
    yield s
    s.close()


def live_paths(store: Store) -> set[str]:
    return {Path(p).name for p in store.live_paths_under("/")}


def test_first_run_embeds_everything_and_vectors_match_the_model(store: Store, loaded_tiny, photo_dir: Path) -> None:
    report = run_index(store, loaded_tiny, photo_dir)
    assert (report.found, report.embedded, report.unchanged, report.reused, report.skipped.total) == (12, 12, 0, 0, 0)
    assert store.counts() == {"files": 12, "deleted": 0, "failed": 0, "vectors": 12}
    path = sorted(photo_dir.rglob("*.png"))[0]
    row = store.lookup(str(path.resolve()))
    assert (row.width, row.height) == load_image(path).size and row.sha256 and not row.deleted
    with torch.no_grad():
        want = loaded_tiny.model.encode_image(loaded_tiny.preprocess(load_image(path))[None], normalize=True)[0].numpy()
    np.testing.assert_allclose(store.vector(row.vector_id), want, atol=1e-5)


def test_rerun_skips_unchanged_files(store: Store, loaded_tiny, photo_dir: Path) -> None:
    run_index(store, loaded_tiny, photo_dir)
    generation = store.generation
    report = run_index(store, loaded_tiny, photo_dir)
    assert (report.embedded, report.unchanged, report.reused, report.deleted) == (0, 12, 0, 0)
    assert store.generation == generation  # nothing committed: the FAISS file stays current


def test_rename_and_duplicate_reuse_vectors(store: Store, loaded_tiny, photo_dir: Path) -> None:
    run_index(store, loaded_tiny, photo_dir)
    a, b = sorted((photo_dir / "holiday").glob("*.png"))[:2]
    a.rename(photo_dir / "renamed.png")
    shutil.copy(b, photo_dir / "work" / "copy-of-b.png")
    report = run_index(store, loaded_tiny, photo_dir)
    assert (report.embedded, report.reused, report.deleted, report.unchanged) == (0, 2, 1, 11)
    assert store.counts() == {"files": 13, "deleted": 1, "failed": 0, "vectors": 12}
    assert store.lookup(str((photo_dir / "renamed.png").resolve())).vector_id == store.lookup(str(a.resolve())).vector_id
    # The duplicate and its original share a vector, so a search finds both with the same score.
    searcher = Searcher(store, loaded_tiny)
    hits = searcher.search_vector(store.vector(store.lookup(str(b.resolve())).vector_id), top=2)
    assert {Path(h.path).name for h in hits} == {b.name, "copy-of-b.png"} and hits[0].score == hits[1].score


def test_vanished_files_are_soft_deleted_and_come_back(store: Store, loaded_tiny, photo_dir: Path) -> None:
    run_index(store, loaded_tiny, photo_dir)
    gone = sorted(photo_dir.rglob("*.png"))[3]
    kept = gone.read_bytes()
    gone.unlink()
    assert run_index(store, loaded_tiny, photo_dir).deleted == 1
    row = store.lookup(str(gone.resolve()))
    assert row.deleted and gone.name not in live_paths(store)
    searcher = Searcher(store, loaded_tiny)
    assert gone.name not in {Path(h.path).name for h in searcher.search_vector(store.vector(row.vector_id), top=12)}
    gone.write_bytes(kept)
    report = run_index(store, loaded_tiny, photo_dir)
    assert (report.reused, report.embedded) == (1, 0) and not store.lookup(str(gone.resolve())).deleted
    assert searcher.search_vector(store.vector(row.vector_id), top=1)[0].path == str(gone.resolve())


def test_changed_content_is_embedded_again(store: Store, loaded_tiny, photo_dir: Path, shapes_data: Path) -> None:
    run_index(store, loaded_tiny, photo_dir)
    target = sorted(photo_dir.rglob("*.png"))[0]
    shutil.copy(sorted((shapes_data / "val" / "images").glob("*.png"))[0], target)
    report = run_index(store, loaded_tiny, photo_dir)
    assert (report.embedded, report.unchanged) == (1, 11)
    assert store.counts()["vectors"] == 13


def test_bad_files_are_skipped_with_reasons_and_not_retried(store: Store, loaded_tiny, photo_dir: Path) -> None:
    (photo_dir / "notes.png").write_text("not an image")
    (photo_dir / "empty.jpg").write_bytes(b"")
    (photo_dir / "bomb.png").write_bytes(png_header(100_000, 100_000))
    good = sorted(photo_dir.rglob("*.png"))[0].read_bytes()
    (photo_dir / "truncated.png").write_bytes(good[: len(good) // 2])
    report = run_index(store, loaded_tiny, photo_dir)
    assert report.embedded == 12 and report.skipped.total == 4
    reasons = {Path(p).name: r for p, r in report.skipped.examples}
    assert reasons["notes.png"].startswith("not an image") and reasons["empty.jpg"].startswith("empty file")
    assert reasons["bomb.png"].startswith("too many pixels")
    assert reasons["truncated.png"].startswith(("not an image", "truncated or corrupt"))  # Pillow decides which
    assert store.counts()["failed"] == 4
    again = run_index(store, loaded_tiny, photo_dir)
    assert again.unchanged == 16 and again.skipped.total == 4 and again.embedded == 0  # listed, not re-read


def test_pixel_limit_is_configurable(store: Store, loaded_tiny, photo_dir: Path) -> None:
    report = run_index(store, loaded_tiny, photo_dir, IndexerConfig(max_pixels=1000, progress=False))
    assert report.embedded == 0 and report.skipped.by_reason == {"too many pixels": 12}


def test_faiss_file_is_a_cache_of_sqlite(store: Store, loaded_tiny, photo_dir: Path) -> None:
    run_index(store, loaded_tiny, photo_dir)
    assert VectorIndex.load(store.index_path, IndexConfig()).generation == store.generation
    store.index_path.write_bytes(b"garbage")  # a torn or foreign file is rebuilt, not trusted
    reopened = Store.open(store.path)
    assert reopened.vector_index().size == 12
    saved = VectorIndex.load(store.index_path, IndexConfig())
    assert saved.size == 12 and saved.generation == store.generation and len(saved.ids) == 12


def test_a_stale_index_is_updated_not_rebuilt(store: Store, loaded_tiny, photo_dir: Path, shapes_data: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run_index(store, loaded_tiny, photo_dir)
    monkeypatch.setattr(VectorIndex, "build", classmethod(lambda *a: pytest.fail("rebuilt instead of updated")))
    for src in sorted((shapes_data / "val" / "images").glob("*.png"))[:3]:
        shutil.copy(src, photo_dir / src.name)
    sorted((photo_dir / "holiday").glob("*.png"))[0].unlink()
    report = run_index(store, loaded_tiny, photo_dir)
    assert (report.embedded, report.deleted) == (3, 1)
    index = Store.open(store.path).vector_index()
    assert index.size == 14 and index.generation == store.generation
    ids, _ = store.live_vectors()
    assert index.ids.tolist() == sorted(ids.tolist())


def test_hnsw_keeps_a_few_stale_vectors_instead_of_rebuilding(store: Store, loaded_tiny, photo_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store.set_index_config(IndexConfig(exact_threshold=4, approximate="hnsw"))
    run_index(store, loaded_tiny, photo_dir)
    gone = sorted(photo_dir.rglob("*.png"))[2]
    gone_vector = store.lookup(str(gone.resolve())).vector_id
    gone.unlink()
    monkeypatch.setattr(VectorIndex, "build", classmethod(lambda *a: pytest.fail("rebuilt instead of updated")))
    run_index(store, loaded_tiny, photo_dir)  # 1 stale of 12 is under HNSW_MAX_STALE
    index = store.vector_index()
    assert index.kind == "hnsw" and index.size == 12 and gone_vector in index.ids
    hits = Searcher(store, loaded_tiny).search_vector(store.vector(gone_vector), top=11)
    assert len(hits) == 11 and str(gone.resolve()) not in {h.path for h in hits}
    monkeypatch.undo()
    for path in sorted(photo_dir.rglob("*.png"))[:3]:  # now 4 of 12 are stale: rebuilt without them
        path.unlink()
    run_index(store, loaded_tiny, photo_dir)
    assert store.vector_index().size == 8


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_above_threshold(store: Store, loaded_tiny, photo_dir: Path, kind: str) -> None:
    store.set_index_config(IndexConfig(exact_threshold=4, approximate=kind, ivf_nlist=2, ivf_nprobe=2))
    run_index(store, loaded_tiny, photo_dir)
    index = store.vector_index()
    assert index.kind == kind and index.size == 12
    searcher = Searcher(store, loaded_tiny)
    row = store.lookup(str(sorted(photo_dir.rglob("*.png"))[5].resolve()))
    assert searcher.search_vector(store.vector(row.vector_id), top=3)[0].id == row.id


def test_another_checkpoint_is_refused(store: Store) -> None:
    with pytest.raises(ConfigError, match="not comparable"):
        store.bind_model(ModelIdentity("other", "1" * 64, 32))


def test_index_folder_records_the_checkpoint(tiny_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> None:
    report = index_folder(tmp_path / "x.db", photo_dir, tiny_checkpoint, QUIET)
    assert report.embedded == 12
    with Store.open(tmp_path / "x.db") as store:
        assert Path(store.model().path) == tiny_checkpoint.resolve() and len(store.model().sha256) == 64
