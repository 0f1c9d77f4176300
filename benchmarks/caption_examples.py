"""Example captions of trained captioning runs next to the ground truth (issue 9.1's measurement).

For the first ``--count`` test images: greedy and beam-search (3 beams) captions of each run, and the
image's first reference caption; also the share of test images whose greedy caption names every
object's shape and colour as a reference does (an exact-match rate over all references).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/caption_examples.py --data /tmp/cap/data \
        --runs /tmp/cap/coca-tiny /tmp/cap/blip-tiny --count 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import coembed
from coembed.data.datasets import read_samples
from coembed.generation import caption
from coembed.transforms import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--count", type=int, default=5)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.data) / args.split
    samples, _ = read_samples(root)
    report = {}
    for run in args.runs:
        model, preprocess, tokenizer = coembed.load(run)
        images = torch.stack([preprocess(load_image(root / s.image)) for s in samples])
        start = time.perf_counter()
        greedy = caption(model, images, tokenizer, "greedy", max_length=40)
        seconds = time.perf_counter() - start
        beam = caption(model, images[: args.count], tokenizer, "beam", num_beams=3, max_length=40)
        exact = sum(g in s.captions for g, s in zip(greedy, samples)) / len(samples)
        report[Path(run).name] = {"greedy_exact_match": round(exact, 3), "greedy_seconds_per_image": round(seconds / len(samples), 4),
                                  "examples": [{"image": s.image, "truth": s.captions[0], "greedy": g, "beam": b}
                                               for s, g, b in zip(samples, greedy, beam)]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
