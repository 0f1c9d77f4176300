"""Which patch embedding lets a small ViT learn object shapes quickly? A supervised probe on `shapes`.

Trains the `tiny` vision tower (width 128, 4 layers, patch 8, 64 px) with a linear head to name the
shape of single-object `shapes` training images, once per stem, with the same seed, data and steps,
and reports held-out accuracy along the way. This is why `tiny` uses the hybrid conv stem.

    .venv/bin/python benchmarks/stem_ablation.py --data data/shapes [--steps 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from coembed.data.datasets import ImageTextDataset, read_samples
from coembed.towers.vit import VisionConfig, VisionTransformer
from coembed.transforms import ImageTransform


def run(data: str, stem: str, steps: int, batch: int = 128, held_out: int = 500) -> list[dict]:
    torch.manual_seed(0)
    samples, _ = read_samples(f"{data}/train")
    meta = json.load(open(f"{data}/meta.json"))
    singles = [s for s in samples if len(s.meta["objects"]) == 1]
    labels = torch.tensor([meta["shapes"].index(s.meta["objects"][0]["shape"]) for s in singles])
    ds = ImageTextDataset(f"{data}/train", singles, ImageTransform(64))
    ds.preload()
    pixels = ds._cache  # (N, 64, 64, 3) uint8
    train_idx, test_idx = torch.arange(len(singles) - held_out), torch.arange(len(singles) - held_out, len(singles))
    vit = VisionTransformer(VisionConfig(image_size=64, patch_size=8, width=128, layers=4, heads=2, stem=stem), output_dim=8)
    opt = torch.optim.AdamW(vit.parameters(), lr=2e-3, weight_decay=0.05)
    rows, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        b = train_idx[torch.randint(len(train_idx), (batch,))]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(vit(ds.transform.normalize(pixels[b])).float(), labels[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps:
            vit.eval()
            with torch.no_grad():
                acc = (vit(ds.transform.normalize(pixels[test_idx])).argmax(1) == labels[test_idx]).float().mean().item()
            vit.train()
            rows.append({"stem": stem, "step": step, "loss": round(loss.item(), 4), "test_acc": round(acc, 4),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(f"{stem:6s} step {step:4d}  loss {loss.item():.3f}  held-out shape accuracy {acc:.3f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/shapes")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [r for stem in ("patch", "conv") for r in run(args.data, stem, args.steps)]
    print("\nstem    final held-out shape accuracy")
    for stem in ("patch", "conv"):
        print(f"{stem:6s}  {[r for r in rows if r['stem'] == stem][-1]['test_acc']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
