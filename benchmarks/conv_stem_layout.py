"""The `tiny` conv stem's forward + backward with NCHW input vs channels-last input, on CPU.

``ConvStem.forward`` converts its input to channels-last; this script runs the stem's layers on the
same weights and images both ways, checks the gradients agree, times the two alternately and
reports medians and the ratio:

    .venv/bin/python benchmarks/conv_stem_layout.py [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from coembed.presets import create_model


def _step(layers: torch.nn.Module, images: torch.Tensor, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = layers(images)
    out.float().square().mean().backward()


def _grads(layers: torch.nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    layers.zero_grad(set_to_none=True)
    _step(layers, images, bf16=False)
    return [p.grad.clone() for p in layers.parameters()]


def run(batch: int, rounds: int, bf16: bool) -> dict:
    torch.manual_seed(0)
    layers = create_model("tiny").visual.stem.layers.train()  # the stem's modules, without its layout conversion
    nchw = torch.randn(batch, 3, 64, 64)
    inputs = {"nchw": nchw, "channels_last": nchw.contiguous(memory_format=torch.channels_last)}
    diff = max((a - b).abs().max().item() for a, b in zip(_grads(layers, inputs["nchw"]), _grads(layers, inputs["channels_last"])))
    times: dict[str, list[float]] = {k: [] for k in inputs}
    for x in inputs.values():
        _step(layers, x, bf16)
    for _ in range(rounds):
        for name, x in inputs.items():
            layers.zero_grad(set_to_none=True)
            start = time.perf_counter()
            _step(layers, x, bf16)
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batch": batch, "precision": "bf16" if bf16 else "fp32", "grad_max_abs_diff_fp32": diff, "nchw_s": med["nchw"],
            "channels_last_s": med["channels_last"], "speedup_channels_last": med["nchw"] / med["channels_last"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run(128, args.rounds, bf16) for bf16 in (True, False)]
    print(f"torch {torch.__version__}, {args.threads} threads, tiny conv stem, forward + backward, median of {args.rounds} rounds\n")
    print("| batch | precision | NCHW s/step | channels-last s/step | speed-up | grad max abs diff (fp32) |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['precision']} | {r['nchw_s']:.4f} | {r['channels_last_s']:.4f} | "
              f"{r['speedup_channels_last']:.2f}x | {r['grad_max_abs_diff_fp32']:.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
