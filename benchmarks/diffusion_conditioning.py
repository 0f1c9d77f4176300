"""Does a text-to-image diffusion run read each attribute word of its prompt? Two measurements:

1. The text encoder: mean cosine between the pooled text embeddings (what the U-Net's FiLM reads) of
   "a small {colour} {shape}" captions that differ only in the shape word, and only in the colour word.
   Near 1 means the encoder barely tells those words apart, so no generator conditioned on it can.
2. The denoiser: its loss on single-object validation images with the true caption, with the shape word
   swapped for another shape, and with the colour word swapped, at fixed timesteps and noise. A swap that
   leaves the loss unchanged is a word the model ignores.

    python benchmarks/diffusion_conditioning.py --run /work/gen-bench/diffusion-v3 --data /work/gen-bench/shapes32 \
        [--run ...] [--images 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F

import coembed
from coembed.data.datasets import read_samples
from coembed.models.families import context_length
from coembed.objectives.diffusion import denoise_loss
from coembed.transforms import load_image

SHARES = (0.2, 0.4, 0.6, 0.8)  # timesteps, as shares of T


def encoder_separation(model, tokenizer, shapes: list[str], colors: list[str]) -> dict[str, float]:
    """Mean pooled-embedding cosine across shapes (same colour) and across colours (same shape)."""
    captions = [f"a small {c} {s}" for c in colors for s in shapes]
    with torch.no_grad():
        _, _, pooled = model.encode_text(tokenizer(captions, context_length=context_length(model)))
    e = F.normalize(pooled.float(), dim=-1).view(len(colors), len(shapes), -1)
    across_shapes = torch.einsum("csd,ctd->cst", e, e)  # (colour, shape, shape)
    across_colors = torch.einsum("csd,esd->sce", e, e)  # (shape, colour, colour)
    off = lambda n: ~torch.eye(n, dtype=torch.bool)  # noqa: E731
    return {"cos_across_shapes": across_shapes[:, off(len(shapes))].mean().item(),
            "cos_across_colors": across_colors[:, off(len(colors))].mean().item()}


def swap_losses(model, tokenizer, data: Path, shapes: list[str], colors: list[str], n: int, seed: int = 0) -> list[dict]:
    """Per timestep share, the loss with the true, shape-swapped and colour-swapped caption."""
    from coembed.loading import default_preprocess

    samples, _ = read_samples(data / "val")
    samples = [s for s in samples if len(s.meta.get("objects", [])) == 1][:n]
    if not samples:
        raise SystemExit(f"{data / 'val'}: no single-object samples with 'objects' metadata")
    preprocess, rng = default_preprocess(model), random.Random(seed)
    images = torch.stack([preprocess(load_image(data / "val" / s.image)) for s in samples])
    objects = [s.meta["objects"][0] for s in samples]

    def caption(o: dict, shape: str | None = None, color: str | None = None) -> str:
        return f"a {o['size']} {color or o['color']} {shape or o['shape']}"

    captions = {"true": [caption(o) for o in objects],
                "shape_swapped": [caption(o, shape=rng.choice([x for x in shapes if x != o["shape"]])) for o in objects],
                "color_swapped": [caption(o, color=rng.choice([x for x in colors if x != o["color"]])) for o in objects]}
    tokens = {k: tokenizer(v, context_length=context_length(model)) for k, v in captions.items()}
    rows = []
    with torch.no_grad():
        for share in SHARES:
            t = torch.full((len(samples),), int(share * (model.cfg.timesteps - 1)))
            noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
            rows.append({"share": share, **{k: denoise_loss(model, images, v, t, noise, None).item() for k, v in tokens.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="diffusion run or checkpoint (repeatable)")
    parser.add_argument("--data", type=Path, required=True, help="shapes folder with meta.json and a val split")
    parser.add_argument("--images", type=int, default=64, help="single-object val images scored")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    meta = json.loads((args.data / "meta.json").read_text())
    out = {}
    for run in args.run:
        model, _, tokenizer = coembed.load(run)
        model.eval()
        sep = encoder_separation(model, tokenizer, meta["shapes"], meta["colors"])
        rows = swap_losses(model, tokenizer, args.data, meta["shapes"], meta["colors"], args.images)
        out[run] = {"encoder": sep, "losses": rows}
        print(f"{run}\n  pooled cosine across shapes {sep['cos_across_shapes']:.3f}, across colours {sep['cos_across_colors']:.3f}")
        print(f"  {'t/T':>5} {'true':>8} {'shape swapped':>14} {'colour swapped':>15}")
        for r in rows:
            print(f"  {r['share']:>5.1f} {r['true']:>8.4f} {r['shape_swapped']:>14.4f} {r['color_swapped']:>15.4f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
