"""Training-step time with PyTorch's fused SDPA kernel vs the plain matmul ("math") kernel, on CPU.

For each model the same weights and inputs go through forward + backward with each kernel; the
script checks that the gradients agree (fp32, max abs difference), then times the kernels
alternately for several rounds and reports medians and the ratio. This is what the trainer's
``attention_kernel: auto`` (math on CPU) rests on:

    .venv/bin/python benchmarks/attention_kernels.py [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from coembed.presets import create_model

# (name, preset, batch, what): the image tower of `tiny` (conv stem, 65 tokens), its text tower
# (causal, 24 tokens) and the ViT-B/32 image tower (50 tokens).
CASES = [("tiny image", "tiny", 128, "image"), ("tiny text", "tiny", 128, "text"), ("vit-b-32 image", "vit-b-32", 16, "image")]
KERNELS = {"fused": None, "math": SDPBackend.MATH}


def _step(model, inputs, what: str, kernel, bf16: bool) -> None:
    ctx = sdpa_kernel(kernel) if kernel is not None else torch.autocast("cpu", enabled=False)
    with ctx, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model.encode_image(inputs) if what == "image" else model.encode_text(inputs)
    out.float().square().mean().backward()


def _inputs(model, batch: int, what: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if what == "image":
        size = model.cfg.vision.image_size
        return torch.randn(batch, 3, size, size, generator=g)
    return torch.randint(1, model.cfg.text.vocab_size - 1, (batch, 24), generator=g)


def _grads(model, inputs, what, kernel) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    _step(model, inputs, what, kernel, bf16=False)
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def run_case(name: str, preset: str, batch: int, what: str, rounds: int, bf16: bool) -> dict:
    torch.manual_seed(0)
    model = create_model(preset).train()
    inputs = _inputs(model, batch, what)
    a, b = _grads(model, inputs, what, KERNELS["fused"]), _grads(model, inputs, what, KERNELS["math"])
    diff = max((x - y).abs().max().item() for x, y in zip(a, b))
    times: dict[str, list[float]] = {k: [] for k in KERNELS}
    for kernel in KERNELS.values():  # warm-up
        _step(model, inputs, what, kernel, bf16)
    for _ in range(rounds):
        for label, kernel in KERNELS.items():
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            _step(model, inputs, what, kernel, bf16)
            times[label].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"case": name, "batch": batch, "precision": "bf16" if bf16 else "fp32", "grad_max_abs_diff_fp32": diff,
            "fused_s": med["fused"], "math_s": med["math"], "speedup_math": med["fused"] / med["math"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run_case(*case, rounds=args.rounds, bf16=bf16) for case in CASES for bf16 in (True, False)]
    print(f"torch {torch.__version__}, {args.threads} threads, forward + backward, median of {args.rounds} rounds\n")
    print("| case | batch | precision | fused s/step | math s/step | math speed-up | grad max abs diff (fp32) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['batch']} | {r['precision']} | {r['fused_s']:.3f} | {r['math_s']:.3f} | "
              f"{r['speedup_math']:.2f}x | {r['grad_max_abs_diff_fp32']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
