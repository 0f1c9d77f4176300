"""Train a fusion family's preset (``vilt-tiny``, ``vlmo-tiny``) with its objective's ``compute_losses``.

A stop-gap while ``coembed train`` learns the fusion families: AdamW over the model's parameter groups,
warm-up + cosine learning rate, bf16 autocast with the matmul attention kernel (as the trainer on
CPU), gradient clipping at 1, a BPE vocabulary trained on the training captions, one random caption
and one manifest hard negative per image. Writes ``OUT/checkpoint`` (``coembed.load``-able) and
``OUT/train.json`` (settings, wall time, the loss terms' means over the last 50 steps).

    python benchmarks/train_fusion.py --preset vilt-tiny --data /tmp/b/shapes --out /tmp/b/vilt --steps 600
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from coembed.data.datasets import ImageTextDataset, collate_image_text, read_samples
from coembed.data.splits import split_root
from coembed.io import atomic_write_json
from coembed.layers.kernels import attention_kernel
from coembed.loading import default_preprocess, save
from coembed.models.families import OBJECTIVES
from coembed.objectives import FusionBatch
from coembed.presets import apply_overrides, get_preset, new_model
from coembed.tokenizer import Tokenizer
from coembed.train.optim import build_optimizer, cosine_lr, set_lr


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    return p.parse_args()


def batches(dataset: ImageTextDataset, batch_size: int, seed: int):
    """Endless shuffled batches, a new permutation (and caption draw) every epoch."""
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        chunks = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
        yield from DataLoader(dataset, batch_sampler=chunks, collate_fn=collate_image_text, num_workers=0)
        epoch += 1


def to_fusion_batch(batch, tokenizer: Tokenizer, context: int) -> FusionBatch:
    negatives = tokenizer(batch.negatives, context_length=context) if len(batch.negatives) == len(batch.captions) else None
    return FusionBatch(images=batch.images, tokens=tokenizer(batch.captions, context_length=context),
                       image_ids=batch.indices, negatives=negatives)


def step(model, objective, optimizer, batch: FusionBatch, generator: torch.Generator, progress: float, bf16: bool) -> dict[str, float]:
    model.train()
    with attention_kernel("auto", "cpu", bf16=bf16), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses = objective.compute_losses(model, batch, progress=progress, weights={}, generator=generator)
    total = sum(losses.values())
    if not torch.isfinite(total):
        raise RuntimeError(f"loss became {total.item()}")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if hasattr(model, "logit_scale"):
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100.0))
    return {k: v.item() for k, v in losses.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = split_root(args.data, "train")
    samples, _ = read_samples(root)
    tokenizer = Tokenizer.train((c for s in samples for c in s.captions), vocab_size=1024)
    cfg = apply_overrides(get_preset(args.preset), {"vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id})
    model = new_model(cfg)
    family = cfg.to_dict()["family"]
    objective = importlib.import_module(OBJECTIVES[family])
    dataset = ImageTextDataset(root, samples, default_preprocess(model), seed=args.seed, with_negatives=True)
    dataset.preload()
    optimizer = build_optimizer(model, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.98), eps=1e-6)
    generator = torch.Generator().manual_seed(args.seed)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    stream = batches(dataset, args.batch_size, args.seed)
    for i in (bar := tqdm(range(args.steps), desc=args.preset)):
        set_lr(optimizer, cosine_lr(i, base_lr=args.lr, warmup_steps=args.warmup, total_steps=args.steps))
        fusion = to_fusion_batch(next(stream), tokenizer, cfg.context_length)
        history.append(step(model, objective, optimizer, fusion, generator, i / args.steps, not args.fp32))
        bar.set_postfix({k: f"{v:.3f}" for k, v in history[-1].items()})
    seconds = time.perf_counter() - start
    out = Path(args.out)
    save(out / "checkpoint", model.eval(), tokenizer)
    tail = history[-50:]
    summary = {**vars(args), "family": family, "train_seconds": round(seconds, 1), "samples": args.steps * args.batch_size,
               "final_losses": {k: sum(h[k] for h in tail) / len(tail) for k in tail[0]}}
    atomic_write_json(out / "train.json", summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
