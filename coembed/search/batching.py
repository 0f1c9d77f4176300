"""Micro-batching of text encodings for a server: concurrent queries share one forward pass.

A request thread hands its texts to :meth:`TextBatcher.encode` and waits; one worker thread takes
whatever has queued up (at most ``max_batch`` texts, waiting at most ``max_wait_s`` for more after
the first) and encodes it in one call. On a small CPU this turns N concurrent single-text forward
passes, which fight over the cores, into one batched pass.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np


class TextBatcher:
    """Wraps ``encode`` ((texts) -> (N, D) array) so concurrent callers are served in batches."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray], max_batch: int = 64, max_wait_s: float = 0.002) -> None:
        self._encode, self.max_batch, self.max_wait_s = encode, max_batch, max_wait_s
        self._queue: queue.Queue[tuple[list[str], Future] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="coembed-text-batcher", daemon=True)
        self._worker.start()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), D) embeddings; blocks until the batch holding them is done."""
        future: Future = Future()
        self._queue.put((list(texts), future))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=5)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            jobs = [first]
            count = len(first[0])
            while count < self.max_batch:
                try:
                    job = self._queue.get(timeout=self.max_wait_s)
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                jobs.append(job)
                count += len(job[0])
            self._serve(jobs)

    def _serve(self, jobs: list[tuple[list[str], Future]]) -> None:
        try:
            emb = self._encode([t for texts, _ in jobs for t in texts])
        except BaseException as e:  # noqa: BLE001 - every waiting caller gets the error
            for _, future in jobs:
                future.set_exception(e)
            return
        start = 0
        for texts, future in jobs:
            future.set_result(emb[start : start + len(texts)])
            start += len(texts)
