"""An indexing run killed with SIGKILL mid-run loses nothing it committed; the next run finishes the job."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from coembed.search.indexer import IndexerConfig, index_folder
from coembed.search.store import Store

# Index in batches of 3 and SIGKILL the process right after the second commit: no cleanup code runs.
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from coembed.search.indexer import IndexerConfig, index_folder

    commits = []
    def on_commit(n):
        commits.append(n)
        if len(commits) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    index_folder(sys.argv[1], sys.argv[2], sys.argv[3], IndexerConfig(batch_size=3, progress=False), on_commit)
""")


def test_killed_run_resumes_without_loss(tiny_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(db), str(photo_dir), str(tiny_checkpoint)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with Store.open(db) as store:
        committed = {p: store.lookup(p).vector_id for p in store.live_paths_under(str(photo_dir.resolve()))}
        assert store.counts()["files"] == 6  # two batches of three
        assert not store.index_path.exists()  # killed before the FAISS file was written: it is only a cache

    report = index_folder(db, photo_dir, tiny_checkpoint, IndexerConfig(batch_size=3, progress=False))
    assert (report.unchanged, report.embedded, report.reused) == (6, 6, 0)
    with Store.open(db) as store:
        assert store.counts() == {"files": 12, "deleted": 0, "failed": 0, "vectors": 12}
        assert all(store.lookup(p).vector_id == v for p, v in committed.items())  # nothing redone or lost
        assert store.vector_index().size == 12
