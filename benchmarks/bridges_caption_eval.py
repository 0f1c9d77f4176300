"""Captioning metrics of trained runs (bridges, the LM alone, any captioner) on a `shapes` split: greedy captions
of every image against its reference captions, BLEU-1..4 and CIDEr-D (:func:`coembed.eval.captioning.caption_metrics`).

Writes ``RUN/eval_caption_SPLIT.json`` for each run and prints one JSON line per run.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bridges_caption_eval.py --data /tmp/bvqa/data \
        --runs /tmp/bvqa/lm /tmp/bvqa/llava_cap
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import coembed
from coembed.data.datasets import read_samples
from coembed.eval.captioning import caption_metrics
from coembed.generation import caption
from coembed.transforms import load_image

BATCH = 50


def evaluate(run: str, root: Path, max_length: int) -> dict:
    """Greedy captions of every image of ``root`` by ``run`` and their metrics against the references."""
    model, preprocess, tokenizer = coembed.load(run)
    samples, _ = read_samples(root)
    start, cands = time.perf_counter(), {}
    for i in range(0, len(samples), BATCH):
        chunk = samples[i : i + BATCH]
        images = torch.stack([preprocess(load_image(root / s.image)) for s in chunk])  # (B, 3, H, W)
        for s, text in zip(chunk, caption(model, images, tokenizer, "greedy", max_length=max_length)):
            cands[s.image] = [text]
    seconds = time.perf_counter() - start
    metrics = caption_metrics({s.image: s.captions for s in samples}, cands)
    examples = [{"image": s.image, "truth": s.captions[0], "greedy": cands[s.image][0]} for s in samples[:3]]
    return {"run": run, "split": root.name, "images": len(samples), "metrics": metrics, "seconds": round(seconds, 1),
            "examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-length", type=int, default=40, help="tokens per caption, <sot> and <eot> included")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        report = evaluate(run, Path(args.data) / args.split, args.max_length)
        (Path(run) / f"eval_caption_{args.split}.json").write_text(json.dumps(report, indent=2))
        print(json.dumps({"run": run, **report["metrics"], "seconds": report["seconds"]}), flush=True)


if __name__ == "__main__":
    main()
