"""Loopback load test of ``coembed serve``: concurrent text queries and image uploads, latency and RSS.

Builds (unless given ``--db``) a small index of generated ``shapes`` images with a tiny model trained
a few steps, starts the real server (uvicorn) in a subprocess on 127.0.0.1 and a free port, runs
``--clients`` threads (stdlib http.client) mixing text searches and image uploads for ``--duration``
seconds (or ``--max-requests``), samples the server's RSS (/proc/PID/status VmRSS), prints a table
(or ``--json``) and exits 1 on any error or on RSS growth after warm-up above ``--max-growth-mb-per-1k``.

    python benchmarks/serve_load.py --duration 60 --clients 4
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TEXTS = ["red circle", "a blue square", '"2:green triangle" - "star"', "yellow star above a cross", "purple hexagon"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_index(root: Path) -> Path:
    """Shapes images, a tiny model trained 4 steps, an index of the test images."""
    from coembed.data.synthetic.shapes import ShapesConfig, generate
    from coembed.search.indexer import IndexerConfig, index_folder
    from coembed.train.config import TrainConfig
    from coembed.train.loop import train

    data = root / "shapes"
    generate(ShapesConfig(train=64, val=16, test=48, heldout=8, workers=1), data)
    model = {"vision.layers": 1, "text.layers": 1, "vision.width": 64, "vision.heads": 2, "text.width": 64,
             "text.heads": 2, "embed_dim": 32}
    cfg = TrainConfig(data=str(data), out=str(root / "run"), preset="tiny", model=model, workers=0, batch_size=32,
                      precision="fp32", progress=False, max_steps=4, lr=3e-3, warmup_steps=1)
    checkpoint = train(cfg).checkpoint
    index_folder(root / "index.db", data / "test" / "images", checkpoint, IndexerConfig(progress=False))
    return root / "index.db"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/api/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("server did not become ready")


def client(port: int, images: list[bytes], stop: threading.Event, budget: list[int], lock: threading.Lock,
           results: list, seed: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        with lock:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        start = time.perf_counter()
        try:
            if rng.random() < 0.7:
                from urllib.parse import quote
                conn.request("GET", f"/api/search?q={quote(rng.choice(TEXTS))}&top=5")
                kind = "text"
            else:
                conn.request("POST", "/api/search/image?top=5", body=rng.choice(images), headers={"Content-Type": "image/png"})
                kind = "image"
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException):
            ok, kind = False, "error"
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        results.append((kind, ok, time.perf_counter() - start))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def run(db: Path, args) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "coembed", "serve", "--db", str(db), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        images = [p.read_bytes() for p in sorted(db.parent.rglob("test/images/*.png"))[:16]] or [b""]
        rss = {"start": rss_mb(proc.pid)}
        results: list = []
        stop, lock, budget = threading.Event(), threading.Lock(), [args.max_requests]
        threads = [threading.Thread(target=client, args=(port, images, stop, budget, lock, results, i)) for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        samples, warm_n = [], None
        while time.perf_counter() - t0 < args.duration and any(t.is_alive() for t in threads):
            time.sleep(0.5)
            samples.append((len(results), rss_mb(proc.pid)))
            if warm_n is None and time.perf_counter() - t0 >= args.warmup:
                warm_n, rss["after_warmup"] = len(results), rss_mb(proc.pid)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - t0
        rss["end"] = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    warm_n = warm_n or 0
    rss.setdefault("after_warmup", rss["start"])
    after = max(1, len(results) - warm_n)
    growth = (rss["end"] - rss["after_warmup"]) / after * 1000
    lat = [r[2] for r in results if r[1]]
    return {"requests": len(results), "errors": sum(not r[1] for r in results),
            "text": sum(r[0] == "text" for r in results), "image": sum(r[0] == "image" for r in results),
            "seconds": round(elapsed, 2), "throughput_rps": round(len(results) / elapsed, 1),
            "p50_ms": round(pct(lat, 0.5), 2), "p95_ms": round(pct(lat, 0.95), 2), "p99_ms": round(pct(lat, 0.99), 2),
            "rss_mb": {k: round(v, 1) for k, v in rss.items()}, "rss_growth_mb_per_1k_after_warmup": round(growth, 2),
            "max_growth_mb_per_1k": args.max_growth_mb_per_1k, "clients": args.clients}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", type=Path, help="an existing index (default: build a tiny one)")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--max-growth-mb-per-1k", type=float, default=2.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args.db or build_index(Path(tmp)), args)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:36s} {value}")
    bad = report["errors"] or report["rss_growth_mb_per_1k_after_warmup"] > args.max_growth_mb_per_1k
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
