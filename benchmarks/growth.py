"""How cost grows, coembed vs OpenCLIP: training step time with batch size, contrastive-loss memory
with batch size, image encoding time with image size.

- **step**: one optimisation step (forward, CLIP loss, backward, clipping, AdamW) of the `tiny-patch`
  dual encoder (the model of benchmarks/trainer_vs_openclip.py, CLIP's 49,408-token vocabulary) at
  each ``--step-batches`` size. OpenCLIP builds the model; coembed loads its weights, so the first
  step's losses agree (max abs difference reported). Inputs: random 64 px images and real captions
  (benchmarks/data/captions.txt) tokenized by OpenCLIP's tokenizer, padded to the context length of
  48 as OpenCLIP pads; coembed's text tower trims the padding itself. Steps alternate between the
  two for ``--rounds`` rounds; medians.
- **loss memory**: peak memory above the inputs of one CLIP-loss forward + backward on B x 512
  embeddings, each run in its own process (the worker of benchmarks/chunked_loss.py): coembed's
  chunked loss, coembed's full-matrix loss and OpenCLIP's ``ClipLoss`` (full-matrix runs up to
  ``--naive-max``).
- **image size**: OpenCLIP's ViT-B/32 (random weights) at each ``--image-sizes`` resolution
  (``force_image_size``), loaded into coembed; images/s of both on the same batch, outputs compared.

    .venv-test/bin/python benchmarks/growth.py --json runs/growth.json --plot docs/img/growth.png
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import open_clip
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import save_file

import coembed
from coembed.io import atomic_write_json
from coembed.train.optim import build_optimizer
from coembed.train.step import train_step
from coembed.viz import new_figure, save_png

sys.path.insert(0, str(Path(__file__).parent))
from chunked_loss import run_worker  # noqa: E402
from inference import caption_batch, compare, time_alternately  # noqa: E402
from trainer_vs_openclip import OC_MODEL, write_model_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--step-batches", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    p.add_argument("--loss-batches", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    p.add_argument("--naive-max", type=int, default=16384)
    p.add_argument("--image-sizes", type=int, nargs="+", default=[128, 224, 320, 448])
    p.add_argument("--image-batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    return p.parse_args(argv)


def tiny_models(folder: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """OpenCLIP's `tiny-patch` with random weights, and coembed's load of the same weights."""
    open_clip.add_model_config(write_model_config(folder / "config"))
    torch.manual_seed(0)
    ref = open_clip.create_model(OC_MODEL, output_dict=True)
    path = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return ref, coembed.load(path, quick_gelu=False).model


def openclip_step(model, optimizer, loss_fn, images, tokens) -> float:
    """OpenCLIP's train_one_epoch step, without the loader: forward, ClipLoss, backward, clip, AdamW."""
    model.train()
    out = model(images, tokens)
    loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, 4.6052)
    return loss.item()


def step_growth(args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        ref, ours = tiny_models(Path(tmp))
    tokenizer = open_clip.get_tokenizer(OC_MODEL)
    # OpenCLIP's default for ViTs: no weight decay on gains, biases, embeddings, temperature.
    groups: dict[bool, list] = {True: [], False: []}
    for n, p in ref.named_parameters():
        groups[p.ndim >= 2 and "embedding" not in n and "logit_scale" not in n].append(p)
    ref_opt = torch.optim.AdamW([{"params": groups[False], "weight_decay": 0.0}, {"params": groups[True], "weight_decay": 0.1}],
                                lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
    our_opt = build_optimizer(ours, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = ClipLoss()
    rows = []
    for batch in args.step_batches:
        images = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
        tokens = tokenizer(caption_batch(batch))
        # Same weights: the first step's losses agree (the models diverge afterwards; timing only).
        fns = {"openclip": lambda: openclip_step(ref, ref_opt, loss_fn, images, tokens),
               "coembed": lambda: train_step(ours, our_opt, images, tokens, loss_name="clip", bf16=False, grad_clip=1.0,
                                             step=1, attention="auto").loss}
        first = {name: fn() for name, fn in fns.items()} if not rows else None
        times = time_alternately(fns, args.rounds)
        for name in fns:
            median = statistics.median(times[name])
            row = {"batch": batch, "impl": name, "median_s": median, "samples_per_s": batch / median, "seconds": times[name]}
            if first:
                row["first_loss_abs_diff"] = abs(first["openclip"] - first["coembed"])
            rows.append(row)
        o, c = rows[-2]["median_s"], rows[-1]["median_s"]
        print(f"step, batch {batch}: OpenCLIP {o:.3f} s, coembed {c:.3f} s ({o / c:.2f}x)", flush=True)
    return rows


def loss_growth(args) -> list[dict]:
    rows = []
    for batch in args.loss_batches:
        for impl in ["coembed-chunked"] + (["coembed-naive", "openclip"] if batch <= args.naive_max else []):
            result = run_worker(impl, "clip", batch, 512, args.threads, 1)
            rows.append({"batch": batch, "impl": impl, **result})
            shown = result.get("error") or f"{result['median_s']:.2f} s, {result['extra_mib']:.0f} MiB"
            print(f"loss, batch {batch}, {impl}: {shown}", flush=True)
    return rows


def image_growth(args) -> list[dict]:
    rows = []
    for size in args.image_sizes:
        torch.manual_seed(0)
        ref = open_clip.create_model("ViT-B-32", force_image_size=size).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "vit.safetensors"
            save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
            ours = coembed.load(path, quick_gelu=False).model.eval()
        images = torch.randn(args.image_batch, 3, size, size, generator=torch.Generator().manual_seed(size))
        for row in compare("image", args.image_batch, {"openclip": lambda: ref.encode_image(images),
                                                        "coembed": lambda: ours.encode_image(images)}, args.rounds, "openclip"):
            rows.append({"image_size": size, "tokens": (size // 32) ** 2 + 1, **{k: v for k, v in row.items() if k != "task"}})
        o, c = rows[-2]["items_per_s"], rows[-1]["items_per_s"]
        print(f"image {size}px: OpenCLIP {o:.1f} img/s, coembed {c:.1f} img/s ({c / o:.2f}x), "
              f"max abs diff {rows[-1]['max_abs_diff_vs_openclip']:.1e}", flush=True)
    return rows


def tables(out: dict) -> str:
    parts = []
    by = {(r["batch"], r["impl"]): r for r in out["step"]}
    lines = ["| batch | OpenCLIP step s | coembed step s | coembed samples/s | ratio |", "|---:|---:|---:|---:|---:|"]
    for b in sorted({r["batch"] for r in out["step"]}):
        o, c = by[b, "openclip"], by[b, "coembed"]
        lines.append(f"| {b} | {o['median_s']:.3f} | {c['median_s']:.3f} | {c['samples_per_s']:.0f} | {o['median_s'] / c['median_s']:.2f}x |")
    parts.append("\n".join(lines))
    by = {(r["batch"], r["impl"]): r for r in out["loss"]}
    lines = ["| batch | OpenCLIP ClipLoss MiB | coembed full MiB | coembed chunked MiB | chunked s | OpenCLIP s |",
             "|---:|---:|---:|---:|---:|---:|"]

    def cell(key, field, fmt):
        r = by.get(key)
        return "n/a" if r is None else ("failed" if "error" in r else format(r[field], fmt))

    for b in sorted({r["batch"] for r in out["loss"]}):
        lines.append(f"| {b} | {cell((b, 'openclip'), 'extra_mib', '.0f')} | {cell((b, 'coembed-naive'), 'extra_mib', '.0f')} | "
                     f"{cell((b, 'coembed-chunked'), 'extra_mib', '.0f')} | {cell((b, 'coembed-chunked'), 'median_s', '.2f')} | "
                     f"{cell((b, 'openclip'), 'median_s', '.2f')} |")
    parts.append("\n".join(lines))
    by = {(r["image_size"], r["impl"]): r for r in out["image"]}
    lines = ["| image size | tokens | OpenCLIP img/s | coembed img/s | ratio | max abs diff |", "|---:|---:|---:|---:|---:|---:|"]
    for s in sorted({r["image_size"] for r in out["image"]}):
        o, c = by[s, "openclip"], by[s, "coembed"]
        lines.append(f"| {s} | {c['tokens']} | {o['items_per_s']:.1f} | {c['items_per_s']:.1f} | "
                     f"{c['items_per_s'] / o['items_per_s']:.2f}x | {c['max_abs_diff_vs_openclip']:.1e} |")
    parts.append("\n".join(lines))
    return "\n\n".join(parts)


def plot(out: dict, path: Path) -> None:
    fig = new_figure(15, 4.4, dpi=100)
    axes = fig.subplots(1, 3)
    styles = {"openclip": ("black", "OpenCLIP"), "coembed": ("tab:blue", "coembed"),
              "coembed-chunked": ("tab:blue", "coembed chunked"), "coembed-naive": ("tab:orange", "coembed full matrix")}
    panels = [("step", "batch", "median_s", "batch size", "seconds per training step", "Training step (tiny, fp32)"),
              ("loss", "batch", "extra_mib", "batch size", "peak MiB above inputs", "CLIP loss fwd+bwd, 512-d"),
              ("image", "image_size", "items_per_s", "image size (px)", "images/s", "ViT-B/32 image encoding")]
    for ax, (key, x, y, xlabel, ylabel, title) in zip(axes, panels):
        for impl in dict.fromkeys(r["impl"] for r in out[key]):
            pts = sorted((r[x], r[y]) for r in out[key] if r["impl"] == impl and "error" not in r)
            color, label = styles[impl]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=color, label=label,
                    ls="--" if impl == "coembed-naive" else "-")
        if key != "image":
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {"setup": {"torch": torch.__version__, "open_clip": open_clip.__version__, "threads": args.threads,
                     "rounds": args.rounds}}
    out["step"] = step_growth(args)
    out["image"] = image_growth(args)
    out["loss"] = loss_growth(args)
    print(tables(out))
    if args.json:
        atomic_write_json(args.json, out)
    if args.plot:
        plot(out, args.plot)


if __name__ == "__main__":
    main()
