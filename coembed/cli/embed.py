"""``coembed embed``: embed a folder of images into ``.npy`` shards with row-aligned metadata.

Layout follows clip-retrieval: ``OUT/img_emb/img_emb_{i}.npy`` and ``OUT/metadata/metadata_{i}.jsonl``
(``{"image_path": ...}`` per row), plus ``OUT/_plan.json`` and a completion marker per partition
(see :mod:`coembed.embeddings.layout`). ``--shard i --num-shards n`` (default: torchrun's ``RANK`` and
``WORLD_SIZE``) embeds the partitions ``p % n == i`` only; a rerun redoes only unfinished partitions.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from coembed.cli.common import add_checkpoint_args, eprint, non_negative_int, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed a folder of images", description="Embed images into .npy shards plus JSONL metadata. "
                       "Run n workers with --shard 0..n-1 --num-shards n (or under torchrun) on the same --out to share the work.")
    add_checkpoint_args(p)
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--shard-size", type=positive_int, default=10000, help="images per output shard")
    p.add_argument("--shard", type=non_negative_int, help="this worker's number, 0..num-shards-1 (default: $RANK, else 0)")
    p.add_argument("--num-shards", type=positive_int, help="number of workers (default: $WORLD_SIZE, else 1)")
    p.add_argument("--device", default="cpu", help="where the model runs; 'cuda' means cuda:$LOCAL_RANK under torchrun (default cpu)")
    p.add_argument("--workers", type=non_negative_int, default=1, help="DataLoader processes decoding images (0: in this process)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.data.datasets import iter_images
    from coembed.embeddings.worker import EmbedConfig, embed_partitions
    from coembed.errors import DataError
    from coembed.loading import load
    from coembed.search.store import checkpoint_identity

    shard, num_shards = shard_arguments(args.shard, args.num_shards, os.environ)
    device = _device(args.device, os.environ)
    root = Path(args.images)
    if not root.is_dir():
        raise DataError(f"--images {root} is not a folder")
    paths = iter_images(root)
    if not paths:
        raise DataError(f"no image files under {root}")
    cfg = EmbedConfig(shard=shard, num_shards=num_shards, shard_size=args.shard_size, batch_size=args.batch_size,
                      workers=max(args.workers, 0), progress=not args.no_progress)
    loaded = load(args.checkpoint, device, quick_gelu=args.quick_gelu)
    identity = checkpoint_identity(args.checkpoint, loaded.model.cfg.embed_dim)
    report = embed_partitions(loaded, identity, root, paths, args.out, cfg)
    if args.json:
        print_json(report.to_dict())
    else:
        eprint(f"embed {shard}/{num_shards}: embedded {report.embedded} images into {args.out} ({report.done_now} shards now, "
               f"{report.already_done} already done, {report.other_workers} for other workers, {report.partitions} in all)")
    if report.skipped.total:
        eprint(report.skipped.summary())
    return 0


def shard_arguments(shard: int | None, num_shards: int | None, env) -> tuple[int, int]:
    """``(shard, num_shards)`` from the arguments, else torchrun's ``RANK`` / ``WORLD_SIZE``, else ``(0, 1)``.

    Raises:
        ConfigError: a value out of range, naming the argument or variable it came from.
    """
    from coembed.errors import ConfigError

    shard_name, num_name = ("--shard", "--num-shards")
    if num_shards is None and "WORLD_SIZE" in env:
        num_shards, num_name = _env_int(env, "WORLD_SIZE"), "WORLD_SIZE (from the environment)"
    if shard is None and "RANK" in env:
        shard, shard_name = _env_int(env, "RANK"), "RANK (from the environment)"
    shard, num_shards = 0 if shard is None else shard, 1 if num_shards is None else num_shards
    if num_shards < 1:
        raise ConfigError(f"{num_name} must be at least 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        raise ConfigError(f"{shard_name} must be in 0..{num_shards - 1} (below {num_name}={num_shards}), got {shard}")
    return shard, num_shards


def _env_int(env, name: str) -> int:
    from coembed.errors import ConfigError

    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"environment variable {name}={env[name]!r} is not an integer") from None


def _device(device: str, env) -> str:
    """``cuda`` under torchrun means this process's own GPU.

    Raises:
        ConfigError: ``device`` is not a device name torch knows (``cpu``, ``cuda``, ``cuda:1`` ...).
    """
    import torch

    from coembed.errors import ConfigError

    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    return f"cuda:{env['LOCAL_RANK']}" if device == "cuda" and "LOCAL_RANK" in env else device
