"""From-scratch text tower vs frozen MiniLM on `shapes`: retrieval, zero-shot and synonym zero-shot.

Reads the metrics ``coembed eval --json`` wrote for each checkpoint, adds zero-shot top-1 with prompts
whose class words never occur in the training captions (:mod:`coembed.eval.synonyms`, the same
prompts for every model) and prints a Markdown table:

    .venv/bin/python benchmarks/text_towers.py --data data/shapes \\
        --run scratch=runs/scratch-560 --run minilm=runs/minilm-560 [--json out.json]

Each ``--run NAME=RUN`` needs ``RUN.eval.json`` beside the run folder (``coembed eval --json > RUN.eval.json``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from coembed.data.datasets import read_samples
from coembed.data.splits import split_root
from coembed.eval.features import embed_split
from coembed.eval.synonyms import SYNONYMS, synonym_zeroshot, unseen_words
from coembed.loading import load

COLUMNS = ("t2i R@1", "i2t R@1", "zero-shot shape", "zero-shot colour", "synonym shape", "synonym colour")


def synonym_scores(run: Path, data: Path, split: str) -> dict[str, float]:
    loaded = load(run)
    root = split_root(data, split)
    samples, _ = read_samples(root)
    feats = embed_split(loaded.model, loaded.tokenizer, root, samples, loaded.preprocess)
    meta = json.loads((data / "meta.json").read_text())
    out = {}
    for attribute, key in (("shape", "shapes"), ("color", "colors")):
        task = synonym_zeroshot(loaded, feats, attribute, meta[key], meta["zeroshot_templates"][attribute])
        out[attribute] = task["acc1"]
    return out


def row(run: Path, data: Path, split: str) -> dict[str, float]:
    metrics = json.loads(Path(f"{run}.eval.json").read_text())
    metrics = metrics.get("metrics", metrics)
    synonyms = synonym_scores(run, data, split)
    r = metrics["retrieval"]
    return dict(zip(COLUMNS, (r["image_retrieval_recall@1"], r["text_retrieval_recall@1"], metrics["zeroshot_shape"]["acc1"],
                               metrics["zeroshot_color"]["acc1"], synonyms["shape"], synonyms["color"])))


def check_unseen(data: Path) -> None:
    """Refuse to report if a synonym's word occurs in a training caption or negative."""
    samples, _ = read_samples(split_root(data, "train"))
    captions = [c for s in samples for c in [*s.captions, *(s.meta.get("negatives") or [])]]
    for attribute, synonyms in SYNONYMS.items():
        if unseen_words(synonyms, captions) != synonyms:
            raise SystemExit(f"{attribute} synonyms occur in the training captions: {synonyms}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=RUN")
    parser.add_argument("--split", default="test")
    parser.add_argument("--json")
    args = parser.parse_args()
    data = Path(args.data)
    check_unseen(data)
    rows = {name: row(Path(run), data, args.split) for name, run in (item.split("=", 1) for item in args.run)}
    print("| text tower | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{values[c]:.3f}" for c in COLUMNS) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
