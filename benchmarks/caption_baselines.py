"""Reference rows for BLEU/CIDEr on a split's captions, without a model: the ceiling a human-like caption
reaches and the floor of a fluent caption of the wrong image.

- ``leave-one-out``: each reference caption in turn scored against the image's other references (the
  COCO "human" score). It has one reference fewer than a model's captions, which lowers BLEU a little.
- ``other image``: the first caption of another image of the split (a seeded derangement) scored
  against this image's references: grammar and vocabulary right, content wrong.

    python benchmarks/caption_baselines.py --data DATA [--split test] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from coembed.data.datasets import read_samples
from coembed.data.splits import split_root
from coembed.eval.captioning import caption_metrics


def leave_one_out(refs: list[list[str]]) -> dict[str, float]:
    """Mean over k of the metrics of reference k against the others (images with fewer than 2 references skipped)."""
    keep = [r for r in refs if len(r) >= 2]
    rounds = min(len(r) for r in keep)
    scores = [caption_metrics({i: r[:k] + r[k + 1:] for i, r in enumerate(keep)}, {i: [r[k]] for i, r in enumerate(keep)})
              for k in range(rounds)]
    return {name: sum(s[name] for s in scores) / rounds for name in scores[0]}


def other_image(refs: list[list[str]], seed: int = 0) -> dict[str, float]:
    """Metrics of the first caption of image ``perm[i] != i`` as the caption of image i."""
    order = list(range(len(refs)))
    rng = random.Random(seed)
    while any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)
    return caption_metrics({i: r for i, r in enumerate(refs)}, {i: [refs[j][0]] for i, j in enumerate(order)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out")
    args = p.parse_args()
    samples, _ = read_samples(split_root(args.data, args.split))
    refs = [list(s.captions) for s in samples]
    rows = {"leave-one-out": leave_one_out(refs), "other image": other_image(refs)}
    for name, metrics in rows.items():
        print(f"{name:<14} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    if args.out:
        Path(args.out).write_text(json.dumps({"data": args.data, "split": args.split, "images": len(refs), **rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
