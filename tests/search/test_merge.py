"""``coembed index --from-embeddings OUT``: the finished partitions of ``coembed embed`` fill a search
store that answers like one built by ``coembed index DIR`` (in-process runs of the real commands)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from coembed.cli.main import main
from coembed.search.store import ModelIdentity, Store


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ok(capsys, *argv) -> dict:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def user_error(capsys, *argv) -> str:
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.startswith(f"coembed {argv[0]}: error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def embedded(capsys, monkeypatch, tiny_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> Path:
    """``photo_dir`` embedded by two workers into partitions of 5, 5 and 2 images."""
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "emb"
    for shard in (0, 1):
        ok(capsys, "embed", "--checkpoint", tiny_checkpoint, "--images", photo_dir, "--out", out, "--shard-size", 5,
           "--shard", shard, "--num-shards", 2, "--no-progress")
    return out


def store_vectors(db: Path) -> dict[str, np.ndarray]:
    with Store.open(db) as store:
        rows = [store.lookup(p) for p in sorted(store.live_paths_under("/"))]
        return {row.path: store.vector(row.vector_id) for row in rows}


def search(capsys, db: Path, text: str) -> list[tuple[str, float]]:
    results = ok(capsys, "search", text, "--db", db, "--top", 5)["results"]
    return [(r["path"], r["score"]) for r in results]


def test_merge_answers_like_indexing_the_folder(capsys, tiny_checkpoint: Path, photo_dir: Path, embedded: Path, tmp_path: Path) -> None:
    merged, direct = tmp_path / "merged.db", tmp_path / "direct.db"
    summary = ok(capsys, "index", "--from-embeddings", embedded, "--db", merged, "--checkpoint", tiny_checkpoint)
    assert (summary["merged"], summary["rows"], summary["added"], summary["missing"]) == (3, 12, 12, [])
    ok(capsys, "index", photo_dir, "--checkpoint", tiny_checkpoint, "--db", direct, "--no-progress")
    ours, theirs = store_vectors(merged), store_vectors(direct)
    assert sorted(ours) == sorted(theirs) and len(ours) == 12
    for path in ours:
        np.testing.assert_allclose(ours[path], theirs[path], atol=1e-5)
    with Store.open(merged) as a, Store.open(direct) as b:
        assert a.model() == b.model()  # text queries use the checkpoint that made the vectors
        assert [a.lookup(p).width for p in ours] == [b.lookup(p).width for p in ours]
    for text in ("a red circle", "a blue square"):
        got, want = search(capsys, merged, text), search(capsys, direct, text)
        assert [p for p, _ in got] == [p for p, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-4)


def test_merge_is_idempotent_and_index_sees_it_unchanged(capsys, tiny_checkpoint: Path, photo_dir: Path, embedded: Path, tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    ok(capsys, "index", "--from-embeddings", embedded, "--db", db)
    with Store.open(db) as store:
        counts, generation = store.counts(), store.generation
    again = ok(capsys, "index", "--from-embeddings", embedded, "--db", db)
    assert (again["added"], again["unchanged"], again["reused"]) == (0, 12, 0)
    with Store.open(db) as store:
        assert store.counts() == counts == {"files": 12, "deleted": 0, "failed": 0, "vectors": 12}
        assert store.generation == generation
    indexed = ok(capsys, "index", photo_dir, "--checkpoint", tiny_checkpoint, "--db", db, "--no-progress")
    assert (indexed["embedded"], indexed["unchanged"]) == (0, 12)


def test_unfinished_partition_is_refused_unless_partial(capsys, embedded: Path, tmp_path: Path) -> None:
    (embedded / "done" / "part_00001.json").unlink()
    db = tmp_path / "m.db"
    err = user_error(capsys, "index", "--from-embeddings", embedded, "--db", db)
    assert "1 of 3 partitions are not finished" in err and "part_00001" in err and "part_00000" not in err
    assert "--allow-partial" in err and not db.exists()
    summary = ok(capsys, "index", "--from-embeddings", embedded, "--db", db, "--allow-partial")
    assert (summary["merged"], summary["missing"], summary["rows"]) == (2, [1], 7)
    with Store.open(db) as store:
        assert store.counts()["files"] == 7


def test_changed_file_left_out(capsys, embedded: Path, photo_dir: Path, tmp_path: Path) -> None:
    changed = sorted(photo_dir.rglob("*.png"))[0]
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    summary = ok(capsys, "index", "--from-embeddings", embedded, "--db", tmp_path / "m.db")
    assert (summary["rows"], summary["added"], summary["stale"]) == (12, 11, 1)
    assert summary["stale_files"] == [str(changed.resolve())]


def test_other_model_refused(capsys, embedded: Path, tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    with Store.open(db, create=True) as store:
        store.bind_model(ModelIdentity("/elsewhere/ckpt", "0" * 64, 32))
    err = user_error(capsys, "index", "--from-embeddings", embedded, "--db", db)
    assert "was built with checkpoint /elsewhere/ckpt" in err and "another --db" in err
    with Store.open(db) as store:
        assert store.counts()["files"] == 0
    other = tmp_path / "weights.safetensors"
    other.write_bytes(b"not the weights")
    err = user_error(capsys, "index", "--from-embeddings", embedded, "--db", tmp_path / "new.db", "--checkpoint", other)
    assert f"--checkpoint {other}" in err and "did not make the embeddings" in err


@pytest.mark.parametrize(("argv", "needle"), [
    (["index", "--db", "{tmp}/x.db"], "give a folder DIR to index, or --from-embeddings OUT"),
    (["index", "{tmp}", "--from-embeddings", "{tmp}", "--db", "{tmp}/x.db"], "not both"),
    (["index", "{tmp}", "--db", "{tmp}/x.db"], "needs --checkpoint"),
    (["index", "--from-embeddings", "{tmp}", "--db", "{tmp}/x.db"], "holds no _plan.json"),
])
def test_argument_errors(capsys, tmp_path: Path, argv: list[str], needle: str) -> None:
    assert needle in user_error(capsys, *[a.format(tmp=tmp_path) for a in argv])
