"""``coembed generate``: images from text prompts with a diffusion checkpoint (a ``diffusion-tiny`` run).

Output: one prompt with ``--n 1`` and ``--out FILE.png`` writes that one PNG. Otherwise ``--out`` is a
folder that receives one PNG per image (``P-K.png``: prompt P, sample K, both from 0), ``grid.png``
(a row per prompt, a column per sample) and ``images.jsonl`` (file, prompt, sample, seed per line).
Every file is written atomically. Sampling shows a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from coembed.cli.common import NON_NEGATIVE_FLOAT, add_checkpoint_args, non_negative_int, positive_int, print_json

UPSCALE_LIMIT = 128  # grid cells are upscaled (nearest) to at least this side, so 32 px samples are visible


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate images from text", description="Generate images from text prompts with a "
                       "diffusion checkpoint (coembed train --preset diffusion-tiny). One prompt and --out FILE.png: one "
                       "PNG; several prompts or --n > 1: --out is a folder of PNGs with grid.png and images.jsonl.")
    add_checkpoint_args(p)
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    p.add_argument("--out", required=True, help="a .png file (one image) or a folder")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM steps (default 50; at most the model's timesteps)")
    p.add_argument("--guidance", type=NON_NEGATIVE_FLOAT, default=3.0, help="classifier-free guidance scale (default 3; 1 = none)")
    p.add_argument("--eta", type=NON_NEGATIVE_FLOAT, default=0.0, help="DDIM eta in [0, 1] (default 0, deterministic)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    p.add_argument("--n", type=positive_int, default=1, help="images per prompt (default 1)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images denoised together (default 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.cli.common import load_checkpoint

    _check_prompts(args)
    loaded = load_checkpoint(args)
    _check_model(loaded.model, args)
    rows = [(p, k) for p in range(len(args.prompts)) for k in range(args.n)]
    images = _sample(loaded, [args.prompts[p] for p, _ in rows], args)
    written = _write(images, rows, args)
    if args.json:
        print_json({"checkpoint": str(args.checkpoint), "steps": args.steps, "guidance": args.guidance, "eta": args.eta,
                    "seed": args.seed, "files": written})
    else:
        print("\n".join(written))
    return 0


def _check_prompts(args: argparse.Namespace) -> None:
    from coembed.errors import ConfigError

    for i, prompt in enumerate(args.prompts):
        if not prompt.strip():
            raise ConfigError(f"prompt {i + 1} is empty; give a caption such as 'a large red circle in the middle'")
    if args.eta > 1:
        raise ConfigError(f"--eta must be in [0, 1], got {args.eta}")
    if Path(args.out).suffix.lower() == ".png" and not _single_file(args):
        raise ConfigError(f"--out {args.out}: {len(args.prompts) * args.n} images need a folder, not a .png file")


def _single_file(args: argparse.Namespace) -> bool:
    return len(args.prompts) == 1 and args.n == 1


def _check_model(model, args: argparse.Namespace) -> None:
    from coembed.errors import CheckpointError, ConfigError

    family = model.cfg.to_dict().get("family") if hasattr(model, "cfg") and hasattr(model.cfg, "to_dict") else type(model).__name__
    if family != "diffusion":
        raise CheckpointError(f"{args.checkpoint} holds a {family} model, which does not generate images; generate needs a "
                              "diffusion checkpoint (coembed train --preset diffusion-tiny)")
    if args.steps > model.cfg.timesteps:
        raise ConfigError(f"--steps must be in [1, {model.cfg.timesteps}] (the model's timesteps), got {args.steps}")


def _sample(loaded, prompts: list[str], args: argparse.Namespace):
    from coembed.generation.diffusion import sample_images

    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm  # a CLI extra; the library reports steps through on_step

        bar = tqdm(total=-(-len(prompts) // args.batch_size) * args.steps, desc="generate", unit="step", dynamic_ncols=True)
    try:
        return sample_images(loaded.model, loaded.tokenizer, prompts, steps=args.steps, guidance=args.guidance, eta=args.eta,
                             seed=args.seed, batch_size=args.batch_size, on_step=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


def to_uint8(images):
    """(N, 3, S, S) floats in [0, 1] -> (N, S, S, 3) uint8."""
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def grid(pixels, rows: int, cols: int, cell: int):
    """(rows * cols, S, S, 3) uint8 in row-major order -> one (rows * cell, cols * cell, 3) image, each
    sample upscaled (nearest) to ``cell`` pixels."""
    import numpy as np

    scale = max(1, cell // pixels.shape[1])
    big = pixels.repeat(scale, axis=1).repeat(scale, axis=2)  # (N, S*scale, S*scale, 3)
    n, h, w, c = big.shape
    return np.ascontiguousarray(big.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c))


def _write(images, rows: list[tuple[int, int]], args: argparse.Namespace) -> list[str]:
    from coembed.data.synthetic.png import encode_png
    from coembed.io import atomic_write_bytes, atomic_write_text

    pixels = to_uint8(images)
    out = Path(args.out)
    if _single_file(args) and out.suffix.lower() == ".png":
        atomic_write_bytes(out, encode_png(pixels[0]))
        return [str(out)]
    out.mkdir(parents=True, exist_ok=True)
    written, lines = [], []
    for (p, k), image in zip(rows, pixels):
        path = out / f"{p}-{k}.png"
        atomic_write_bytes(path, encode_png(image))
        written.append(str(path))
        lines.append(json.dumps({"file": path.name, "prompt": args.prompts[p], "sample": k, "seed": args.seed}))
    atomic_write_bytes(out / "grid.png", encode_png(grid(pixels, len(args.prompts), args.n, UPSCALE_LIMIT)))
    atomic_write_text(out / "images.jsonl", "\n".join(lines) + "\n")
    return written + [str(out / "grid.png")]
