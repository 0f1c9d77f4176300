"""``coembed train``: train a dual encoder on a dataset folder."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from coembed.cli.common import eprint, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model",
                       description="Train a model (dual encoder, fusion encoder, ...) on a dataset folder. Under torchrun "
                                   "(`torchrun --nproc_per_node N -m coembed.train ...`) the processes share each batch.")
    p.add_argument("--data", help="dataset folder (captions.jsonl or CSV, or a folder with train/ val/ splits)")
    p.add_argument("--out", help="run folder: checkpoints, metrics.jsonl")
    p.add_argument("--preset", help="model preset (see `coembed.list_presets()`); default tiny")
    p.add_argument("--config", help="YAML file of training settings")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set lr=5e-4 --set model.vision.layers=6 (repeatable)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--max-steps", type=positive_int)
    p.add_argument("--resume", nargs="?", const="yes", choices=("yes", "auto"),
                   help="continue the run in --out from its last checkpoint; --resume auto: continue if there is one, "
                        "else start (for jobs a scheduler may requeue)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.train.config import build_train_config
    from coembed.train.loop import train

    base = {"data": args.data, "out": args.out, "preset": args.preset, "batch_size": args.batch_size,
            "max_steps": args.max_steps, "progress": False if args.no_progress else None}
    cfg = build_train_config(base, args.config, args.sets)
    result = train(cfg, resume=_resume(args.resume, cfg.out))
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports for the job
        return 0
    summary = {"out": str(result.out), "checkpoint": str(result.checkpoint), "steps": result.steps,
               "samples_seen": result.samples_seen, "seconds": round(result.seconds, 1),
               "last_loss": result.last_loss, "last_val": result.last_val, "skipped": result.skipped.total}
    if args.json:
        print_json(summary)
    else:
        eprint(f"trained {result.steps} steps in {result.seconds:.0f}s; checkpoint: {result.checkpoint}")
        if result.last_val:
            eprint("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in result.last_val.items()))
    if result.skipped.total:
        eprint(result.skipped.summary())
    return 0


def _resume(choice: str | None, out: str) -> bool:
    """``--resume`` resumes (a missing checkpoint is an error); ``--resume auto`` only when ``out`` has one."""
    if choice != "auto":
        return choice == "yes"
    from coembed.checkpoint import CHECKPOINT_DIR

    return any((Path(out) / name).exists() for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"))
