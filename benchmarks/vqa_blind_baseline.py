"""Blind VQA baseline: answer every question with the most frequent training answer of its type (no
image, no question words); prints the per-type table of coembed.eval.vqa on a split.

Usage: python benchmarks/vqa_blind_baseline.py SHAPES_DIR [SPLIT]
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from coembed.data.vqa_pairs import target_answer, vqa_samples
from coembed.eval.vqa import evaluate_vqa


def main(data: str, split: str = "test") -> None:
    train = vqa_samples(Path(data) / "train")
    by_type: dict[str, Counter] = {}
    for s in train:
        by_type.setdefault(s.meta["type"], Counter())[target_answer(s.meta["answers"])] += 1
    prior = {t: c.most_common(1)[0][0] for t, c in by_type.items()}
    test = vqa_samples(Path(data) / split)
    result = evaluate_vqa([prior[s.meta["type"]] for s in test], [s.meta["answers"] for s in test], [s.meta["type"] for s in test])
    print("answers:", prior)
    print(result.table())


if __name__ == "__main__":
    main(*sys.argv[1:])
