"""Inference speed of coembed vs OpenCLIP and Hugging Face transformers, same weights, same inputs.

One OpenCLIP model (default ``ViT-B-32``, random weights) is saved as a state dict; coembed loads it
with its OpenCLIP reader and writes a Hugging Face folder that ``transformers.CLIPModel`` loads. So all
three hold the same numbers. For each tower the outputs are compared (max abs difference), then the
implementations are timed alternately, in rotating order, for ``--rounds`` rounds; medians, items/s
and the ratios are reported.

- image: ``--image-batch`` random images at the model's resolution;
- text: real captions (``benchmarks/data/captions.txt``, COCO-style sentences). OpenCLIP's tokenizer
  pads every caption to 77 tokens and the same ids go to OpenCLIP and to coembed (whose
  ``encode_text`` trims the trailing padding itself); transformers gets the ids trimmed to the
  batch's longest caption, as its tokenizer's ``padding=True`` produces;
- bf16 (coembed only): the model's weights cast to bfloat16, against coembed fp32 on the same
  inputs; cosine similarity of the embeddings to fp32. Where the CPU has no native bf16 (no
  AVX512-BF16/AMX) PyTorch's bf16 matmul is a slow fallback; the bf16 rows then run on fewer inputs
  (``--bf16-slow-batch``) and are marked.

    .venv-test/bin/python benchmarks/inference.py --json inference.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file

import coembed
from coembed.interop import hf as hf_interop
from coembed.towers.text_transformer import trim_padding
from coembed.train.precision import bf16_is_native

CAPTIONS = Path(__file__).parent / "data" / "captions.txt"


def caption_batch(n: int) -> list[str]:
    """``n`` captions of ``CAPTIONS``, repeated in order as needed."""
    lines = CAPTIONS.read_text().splitlines()
    return (lines * (n // len(lines) + 1))[:n]


def build_models(name: str, folder: Path) -> tuple[torch.nn.Module, coembed.Loaded, torch.nn.Module]:
    """OpenCLIP's model, coembed's load of its weights, and transformers' load of coembed's HF export."""
    torch.manual_seed(0)
    ref = open_clip.create_model(name).eval()
    path = folder / "open_clip.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    ours = coembed.load(path, quick_gelu=False)
    ours.model.eval()
    hf_interop.write(folder / "hf", ours.model, ours.preprocess, ours.tokenizer)
    hf = transformers.CLIPModel.from_pretrained(folder / "hf").eval()
    return ref, ours, hf


def time_alternately(fns: dict[str, Callable[[], torch.Tensor]], rounds: int) -> dict[str, list[float]]:
    """Each round calls every function once, the order rotated from round to round."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def hf_features(out) -> torch.Tensor:
    return out.pooler_output if hasattr(out, "pooler_output") else out


def compare(task: str, count: int, fns: dict[str, Callable[[], torch.Tensor]], rounds: int, base: str) -> list[dict]:
    """Outputs compared with ``base``'s, then timed; one row per implementation."""
    with torch.no_grad():
        outputs = {n: f().float() for n, f in fns.items()}  # also the warm-up call
        times = time_alternately(fns, rounds)
    rows = []
    for name in fns:
        median = statistics.median(times[name])
        rows.append({"task": task, "impl": name, "items": count, "seconds": times[name], "median_s": median,
                     "items_per_s": count / median,
                     "max_abs_diff_vs_" + base: (outputs[name] - outputs[base]).abs().max().item(),
                     "cosine_min_vs_" + base: F.cosine_similarity(outputs[name], outputs[base], dim=-1).min().item()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="OpenCLIP architecture name (random weights)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-batch", type=int, default=16)
    parser.add_argument("--text-batch", type=int, default=64)
    parser.add_argument("--bf16-slow-batch", type=int, default=2,
                        help="images (and 8x as many captions) for the bf16 rows where the CPU has no native bf16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        ref, ours, hf = build_models(args.model, Path(tmp))
    size = ours.preprocess.image_size
    images = torch.randn(args.image_batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    captions = caption_batch(args.text_batch)
    tokens = open_clip.get_tokenizer(args.model)(captions)
    trimmed = trim_padding(tokens, 0)
    print(f"{args.model}, random weights, {args.threads} threads; {len(captions)} captions: "
          f"{tokens.shape[1]} tokens padded, longest {trimmed.shape[1]}, mean "
          f"{(tokens != 0).sum(1).float().mean():.1f}")

    rows = compare("image fp32", len(images), {
        "openclip": lambda: ref.encode_image(images),
        "coembed": lambda: ours.model.encode_image(images),
        "transformers": lambda: hf_features(hf.get_image_features(pixel_values=images)),
    }, args.rounds, "openclip")
    rows += compare("text fp32", len(captions), {
        "openclip": lambda: ref.encode_text(tokens),
        "coembed": lambda: ours.model.encode_text(tokens),
        "transformers": lambda: hf_features(hf.get_text_features(input_ids=trimmed)),
    }, args.rounds, "openclip")

    native = bf16_is_native("cpu")
    n_img = len(images) if native else min(args.bf16_slow_batch, len(images))
    n_txt = len(captions) if native else min(8 * args.bf16_slow_batch, len(captions))
    low = copy.deepcopy(ours.model).to(torch.bfloat16).eval()
    bf_images, bf_tokens = images[:n_img], tokens[:n_txt]
    rows += compare("image bf16" + ("" if native else " (no native bf16)"), n_img, {
        "coembed fp32": lambda: ours.model.encode_image(bf_images),
        "coembed bf16": lambda: low.encode_image(bf_images.bfloat16()),
    }, args.rounds if native else 1, "coembed fp32")
    rows += compare("text bf16" + ("" if native else " (no native bf16)"), n_txt, {
        "coembed fp32": lambda: ours.model.encode_text(bf_tokens),
        "coembed bf16": lambda: low.encode_text(bf_tokens),
    }, args.rounds if native else 1, "coembed fp32")

    ratios = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        by = {r["impl"]: r["items_per_s"] for r in rows if r["task"] == task}
        base = "openclip" if "openclip" in by else "coembed fp32"
        for name, speed in by.items():
            if name != base:
                ratios[f"{task}: {name} / {base}"] = speed / by[base]

    print("\n| task | implementation | items | median s | items/s | max abs diff | min cosine |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        diff = next(v for k, v in r.items() if k.startswith("max_abs_diff"))
        cos = next(v for k, v in r.items() if k.startswith("cosine_min"))
        print(f"| {r['task']} | {r['impl']} | {r['items']} | {r['median_s']:.3f} | {r['items_per_s']:.1f} | {diff:.1e} | {cos:.6f} |")
    print()
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "threads": args.threads, "native_bf16": native,
                                         "torch": torch.__version__, "open_clip": open_clip.__version__,
                                         "transformers": transformers.__version__, "rows": rows, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
