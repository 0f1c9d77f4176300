"""``coembed embed``: embed a folder of images into ``.npy`` shards with row-aligned metadata.

Layout follows clip-retrieval: ``OUT/img_emb/img_emb_{i}.npy`` and ``OUT/metadata/metadata_{i}.jsonl``
(``{"image_path": ...}`` per row). Each shard is written atomically, metadata last, so a rerun skips
finished shards and redoes only the interrupted one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from coembed.cli.common import add_checkpoint_args, eprint, load_checkpoint, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed a folder of images", description="Embed images into .npy shards plus JSONL metadata.")
    add_checkpoint_args(p)
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--shard-size", type=positive_int, default=10000, help="images per output shard")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.data.datasets import SkipReport, iter_images
    from coembed.errors import DataError

    root = Path(args.images)
    if not root.is_dir():
        raise DataError(f"--images {root} is not a folder")
    paths = iter_images(root)
    if not paths:
        raise DataError(f"no image files under {root}")
    loaded = load_checkpoint(args)
    out, report, start, written = Path(args.out), SkipReport(), time.perf_counter(), 0
    shards = [paths[i : i + args.shard_size] for i in range(0, len(paths), args.shard_size)]
    for index, shard in enumerate(_progress(shards)):
        if (out / "metadata" / f"metadata_{index}.jsonl").exists():
            continue
        written += _write_shard(loaded, root, shard, out, index, args, report)
    summary = {"out": str(out), "images": len(paths), "embedded_now": written, "shards": len(shards),
               "skipped": report.total, "seconds": round(time.perf_counter() - start, 1)}
    print_json(summary) if args.json else eprint(f"embedded {written} images into {out} ({len(shards)} shards)")
    if report.total:
        eprint(report.summary())
    return 0


def _progress(items):
    from tqdm.auto import tqdm

    return tqdm(items, desc="embed", unit="shard", dynamic_ncols=True) if len(items) > 1 else items


def _write_shard(loaded, root: Path, shard: list[str], out: Path, index: int, args, report) -> int:
    import io

    import numpy as np

    from coembed.eval.features import embed_images
    from coembed.io import atomic_write_bytes, atomic_write_text

    emb, kept, skipped = embed_images(loaded.model, root, shard, loaded.preprocess, batch_size=args.batch_size, workers=args.workers)
    report.merge(skipped)
    buf = io.BytesIO()
    np.save(buf, emb.numpy().astype(np.float32))
    atomic_write_bytes(out / "img_emb" / f"img_emb_{index}.npy", buf.getvalue())
    lines = "".join(json.dumps({"image_path": shard[k]}) + "\n" for k in kept)
    atomic_write_text(out / "metadata" / f"metadata_{index}.jsonl", lines)
    return len(kept)
