"""The server's text micro-batcher: concurrent callers get their own rows, batched together."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from coembed.search.batching import TextBatcher


def test_concurrent_callers_get_their_own_rows() -> None:
    calls: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.array([[float(t)] for t in texts])

    batcher = TextBatcher(encode, max_batch=64, max_wait_s=0.05)
    results: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:
        results[i] = batcher.encode([str(i), str(i + 1000)])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert all(results[i].tolist() == [[i], [i + 1000]] for i in range(20))
    assert sum(calls) == 40 and len(calls) < 20  # shared forward passes


def test_errors_reach_every_caller() -> None:
    def encode(texts: list[str]) -> np.ndarray:
        raise ValueError("boom")

    batcher = TextBatcher(encode)
    with pytest.raises(ValueError, match="boom"):
        batcher.encode(["x"])
    batcher.close()


def test_import_coembed_loads_no_search_or_server_libraries() -> None:
    code = "import sys, coembed, coembed.cli.main; print(sorted(m for m in ('faiss', 'fastapi', 'uvicorn', 'starlette') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
