"""Search performance: vector search alone, end-to-end HTTP queries under load, indexing throughput.

    python benchmarks/search_bench.py                      # everything, about 15-25 min on 2 cores
    python benchmarks/search_bench.py --skip-http --skip-indexing --vectors 100000

1. Vector search: N random unit vectors (dim 128, the `tiny` model's), exact (``IndexFlatIP``) and the
   store's approximate index (``coembed.search.vectors.VectorIndex``); one query at a time, p50/p99
   latency and recall@10 of the approximate index against exact. Two data sets: ``iid`` (uniform on
   the sphere: no structure at all, the worst case for any approximate index) and ``clustered``
   (points around 10,000 centres, closer to how real embeddings fill the space).
2. HTTP: ``coembed serve`` on 127.0.0.1 over an index of `shapes` images with the `tiny` preset;
   ``--clients`` threads send caption queries to ``/api/search`` for ``--seconds`` (bounded in time
   and count, loopback only); p50/p99 latency, requests/s and errors.
3. Indexing: ``coembed.search.indexer`` over ``--index-images`` fresh `shapes` images: images/s.

Prints a table and writes every figure to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

DIM = 128


# ----------------------------------------------------------------------------- 1. vectors alone
def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_vectors(n: int, queries: int, data: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, DIM) database and (queries, DIM) query unit vectors, drawn the same way."""
    rng = np.random.default_rng(seed)
    if data == "iid":
        draw = lambda m: unit(rng.standard_normal((m, DIM), dtype=np.float32))  # noqa: E731
    else:
        centres = unit(rng.standard_normal((10_000, DIM), dtype=np.float32))
        draw = lambda m: unit(centres[rng.integers(0, len(centres), m)] + 0.05 * rng.standard_normal((m, DIM), dtype=np.float32))  # noqa: E731
    base = np.concatenate([draw(min(100_000, n - i)) for i in range(0, n, 100_000)])
    return base, draw(queries)


def time_queries(index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Ids (Q, k) and per-query latency in ms, one query per call as a server makes them."""
    ids, lat = [], []
    for q in queries:
        start = time.perf_counter()
        _, found = index.search(q[None, :], k)
        lat.append((time.perf_counter() - start) * 1000)
        ids.append(found[0])
    return np.stack(ids), np.asarray(lat)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def bench_vectors(n: int, data: str, n_queries: int, approximate: str, sweep: list[int]) -> list[dict]:
    """Exact vs approximate over one data set; the approximate index is built once and timed at each
    value of its search knob (HNSW efSearch or IVF nprobe)."""
    import faiss

    from coembed.search.vectors import IndexConfig, VectorIndex

    faiss.omp_set_num_threads(1)  # as served: concurrency comes from parallel requests, not one query
    base, queries = make_vectors(n, n_queries, data)
    ids = np.arange(n, dtype=np.int64)
    exact = VectorIndex.build(ids, base, IndexConfig(exact_threshold=n), 0)
    truth, lat = time_queries(exact, queries)
    rows = [_vector_row(n, data, exact.kind, 0.0, lat, 1.0, {})]
    faiss.omp_set_num_threads(2)  # build with both cores
    start = time.perf_counter()
    approx = VectorIndex.build(ids, base, IndexConfig(exact_threshold=1, approximate=approximate), 0)
    build = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    knob = "hnsw_ef_search" if approximate == "hnsw" else "ivf_nprobe"
    for value in sweep:
        approx.configure(IndexConfig(approximate=approximate, **{knob: value}))
        found, lat = time_queries(approx, queries)
        rows.append(_vector_row(n, data, approx.kind, build, lat, recall_at(found, truth), {knob: value}))
    return rows


def _vector_row(n: int, data: str, kind: str, build_s: float, lat: np.ndarray, recall: float, params: dict) -> dict:
    return {"bench": "vector", "n": n, "data": data, "index": kind, "build_s": round(build_s, 1), "params": params,
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
            "recall@10": round(recall, 4)}


# ----------------------------------------------------------------------------- 2 and 3: an index of shapes
def tiny_checkpoint(folder: Path, captions: list[str]) -> Path:
    """The `tiny` preset with random weights (speed does not depend on training) and a BPE tokenizer."""
    import coembed
    from coembed.tokenizer import Tokenizer

    coembed.save(folder, coembed.create_model("tiny"), Tokenizer.train(captions, vocab_size=1024))
    return folder


def shapes_folder(folder: Path, n: int) -> tuple[Path, list[str]]:
    from coembed.data.synthetic.shapes import ShapesConfig, generate
    from coembed.io import read_jsonl

    generate(ShapesConfig(train=8, val=8, test=n, heldout=8, workers=2), folder)
    captions = [c for _, line in read_jsonl(folder / "test" / "captions.jsonl") for c in line["captions"]]
    return folder / "test" / "images", captions


def bench_indexing(db: Path, images: Path, checkpoint: Path, n: int) -> dict:
    from coembed.search.indexer import IndexerConfig, index_folder

    report = index_folder(db, images, checkpoint, IndexerConfig(progress=False))
    return {"bench": "indexing", "images": report.embedded, "seconds": round(report.seconds, 2),
            "images_per_second": round(report.images_per_second, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "coembed.cli.main", "serve", "--db", str(db), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("server did not start")


def load_client(port: int, queries: list[str], deadline: float, max_requests: int, out: list, errors: list) -> None:
    """One client: keep-alive connection, queries in turn until the deadline or the request cap."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(max_requests):
        if time.perf_counter() > deadline:
            break
        url = "/api/search?top=10&q=" + urllib.parse.quote(queries[i % len(queries)])
        start = time.perf_counter()
        try:
            conn.request("GET", url)
            response = conn.getresponse()
            response.read()
            ok = response.status == 200
        except OSError as e:
            ok, conn = False, http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            errors.append(repr(e))
        out.append((time.perf_counter() - start) * 1000) if ok else errors.append("status")


def bench_http(db: Path, captions: list[str], clients: int, seconds: float) -> dict:
    port = free_port()
    server = start_server(db, port)
    try:
        warm: list = []
        load_client(port, captions, time.perf_counter() + 3, 50, warm, [])
        lat: list[float] = []
        errors: list[str] = []
        deadline = time.perf_counter() + seconds
        threads = [threading.Thread(target=load_client, args=(port, captions[i::clients], deadline, 100_000, lat, errors))
                   for i in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=20)
    arr = np.asarray(lat)
    return {"bench": "http", "clients": clients, "seconds": round(wall, 1), "requests": len(lat), "errors": len(errors),
            "requests_per_s": round(len(lat) / wall, 1), "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p99_ms": round(float(np.percentile(arr, 99)), 2)}


# ----------------------------------------------------------------------------- main
def print_table(rows: list[dict]) -> None:
    for row in rows:
        if row["bench"] == "vector":
            print(f"vector  n={row['n']:>8} {row['data']:>9} {row['index']:>5}  p50 {row['p50_ms']:7.3f} ms  "
                  f"p99 {row['p99_ms']:7.3f} ms  recall@10 {row['recall@10']:.4f}  build {row['build_s']} s  {row['params']}")
        elif row["bench"] == "http":
            print(f"http    {row['clients']} clients {row['seconds']} s: {row['requests']} requests "
                  f"({row['requests_per_s']}/s), {row['errors']} errors, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms")
        else:
            print(f"index   {row['images']} images in {row['seconds']} s: {row['images_per_second']} images/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", default="100000,1000000", help="database sizes, comma-separated")
    p.add_argument("--data", default="iid,clustered", help="vector distributions: iid, clustered")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--approximate", default="hnsw", choices=("hnsw", "ivf"))
    p.add_argument("--sweep", default="", help="efSearch (hnsw) or nprobe (ivf) values, comma-separated "
                   "(default: the store's default)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--index-images", type=int, default=2000)
    p.add_argument("--skip-vectors", action="store_true")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--skip-indexing", action="store_true")
    p.add_argument("--out", default="runs/search_bench.json")
    args = p.parse_args()

    rows: list[dict] = []
    if not args.skip_vectors:
        from coembed.search.vectors import IndexConfig

        default = IndexConfig().hnsw_ef_search if args.approximate == "hnsw" else IndexConfig().ivf_nprobe
        sweep = [int(v) for v in args.sweep.split(",") if v] or [default]
        for data in args.data.split(","):
            for n in map(int, args.vectors.split(",")):
                new = bench_vectors(n, data, args.queries, args.approximate, sweep)
                print_table(new)
                rows += new
    if not (args.skip_http and args.skip_indexing):
        with tempfile.TemporaryDirectory(prefix="coembed-bench-") as tmp:
            tmp = Path(tmp)
            images, captions = shapes_folder(tmp / "shapes", args.index_images)
            checkpoint = tiny_checkpoint(tmp / "ckpt", captions)
            rows.append(bench_indexing(tmp / "index.db", images, checkpoint, args.index_images))
            print_table(rows[-1:])
            if not args.skip_http:
                rows.append(bench_http(tmp / "index.db", captions, args.clients, args.seconds))
                print_table(rows[-1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
