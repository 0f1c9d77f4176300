"""Per-route request counters and latency percentiles for ``/api/metrics``."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from threading import Lock

import numpy as np

WINDOW = 2048  # latencies kept per route for the percentiles


@dataclass
class _Route:
    requests: int = 0
    client_errors: int = 0
    server_errors: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=WINDOW))


class Metrics:
    """Thread-safe counters; one instance per app."""

    def __init__(self) -> None:
        self._routes: dict[str, _Route] = {}
        self._lock = Lock()
        self._started = time.time()

    def record(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            r = self._routes.setdefault(route, _Route())
            r.requests += 1
            r.client_errors += 400 <= status < 500
            r.server_errors += status >= 500
            r.latencies.append(seconds)

    def snapshot(self) -> dict:
        with self._lock:
            routes = {name: _summary(r) for name, r in sorted(self._routes.items())}
        return {"uptime_s": round(time.time() - self._started, 1), "routes": routes}


def _summary(r: _Route) -> dict:
    lat = np.asarray(r.latencies) * 1000
    p50, p99 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if len(lat) else (0.0, 0.0)
    return {"requests": r.requests, "client_errors": r.client_errors, "server_errors": r.server_errors,
            "p50_ms": round(p50, 3), "p99_ms": round(p99, 3)}
