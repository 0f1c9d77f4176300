"""Memory-linear contrastive losses vs the naive ones and OpenCLIP's ``ClipLoss`` / ``SigLipLoss``.

For each loss (clip, siglip) and batch size, every implementation runs one forward + backward on the
same random normalised embeddings (B x D, float32) in a fresh process, so that each process's peak
resident memory is its own. Reported per run: seconds (median of ``--rounds``) and peak memory above
the inputs (the peak RSS of the process minus its RSS just before the loss, the peak reset there
through ``/proc/self/clear_refs``; where that is unavailable, ``peak_reset`` is false and the figure
also counts the interpreter's earlier peaks, e.g. importing torch). Parity: at ``--parity-batch`` the chunked loss and its
gradients are compared with OpenCLIP's in one process (max abs difference).

    .venv-test/bin/python benchmarks/chunked_loss.py --batches 16384 65536 --json chunked_loss.json

Implementations: ``coembed-chunked`` (coembed.losses.chunked), ``coembed-naive``
(coembed.losses.contrastive), ``openclip`` (open_clip.loss). Naive runs are skipped where the
``B x B`` matrices cannot fit (``--naive-max``, default 16384).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[7])
import torch
from peak_rss import peak_mib, reset_peak, rss_mib
impl, kind, batch, dim, threads, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)

def loss_fn():
    if impl == "coembed-chunked":
        from coembed.losses.chunked import chunked_clip_loss, chunked_siglip_loss
        return (lambda i, t, s, b: chunked_clip_loss(i, t, s)) if kind == "clip" else chunked_siglip_loss
    if impl == "coembed-naive":
        from coembed.losses.contrastive import clip_loss, siglip_loss
        return (lambda i, t, s, b: clip_loss(i, t, s)) if kind == "clip" else siglip_loss
    from open_clip.loss import ClipLoss, SigLipLoss
    if kind == "clip":
        loss = ClipLoss()
        return lambda i, t, s, b: loss(i, t, s)
    loss = SigLipLoss()
    return lambda i, t, s, b: loss(i, t, s, b)

fn = loss_fn()
g = torch.Generator().manual_seed(0)
img = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_()
txt = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=1).requires_grad_()
scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
base = rss_mib()
exact = reset_peak()
times = []
for _ in range(rounds):
    img.grad = txt.grad = scale.grad = bias.grad = None
    start = time.perf_counter()
    loss = fn(img, txt, scale, bias)
    loss.backward()
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": times, "extra_mib": peak_mib() - base, "loss": loss.item(), "peak_reset": exact}))
"""

PARITY = r"""
import json, sys
import torch
from open_clip.loss import ClipLoss, SigLipLoss
from coembed.losses.chunked import chunked_clip_loss, chunked_siglip_loss
batch, dim = int(sys.argv[1]), int(sys.argv[2])
out = {}
for kind in ("clip", "siglip"):
    grads = []
    for impl in ("openclip", "coembed"):
        img = torch.nn.functional.normalize(torch.randn(batch, dim, generator=torch.Generator().manual_seed(1)), dim=1).requires_grad_()
        txt = torch.nn.functional.normalize(torch.randn(batch, dim, generator=torch.Generator().manual_seed(2)), dim=1).requires_grad_()
        scale, bias = torch.tensor(50.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
        if kind == "clip":
            loss = ClipLoss()(img, txt, scale) if impl == "openclip" else chunked_clip_loss(img, txt, scale, 1000)
            params = [img, txt, scale]
        else:
            loss = SigLipLoss()(img, txt, scale, bias) if impl == "openclip" else chunked_siglip_loss(img, txt, scale, bias, 1000)
            params = [img, txt, scale, bias]
        grads.append([loss.detach(), *torch.autograd.grad(loss, params)])
    names = ["loss", "grad_image", "grad_text", "grad_scale", "grad_bias"]
    out[kind] = {n: (a - b).abs().max().item() for n, a, b in zip(names, *grads)}
print(json.dumps(out))
"""


def run_worker(impl: str, kind: str, batch: int, dim: int, threads: int, rounds: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", WORKER, impl, kind, str(batch), str(dim), str(threads), str(rounds),
                           str(Path(__file__).parent)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["exit code %d" % proc.returncode])[-1]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["median_s"] = statistics.median(result["seconds"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[16384, 65536])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--losses", nargs="+", default=["clip", "siglip"], choices=["clip", "siglip"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="forward+backward passes per process (median reported)")
    parser.add_argument("--naive-max", type=int, default=16384, help="largest batch the full-matrix losses are run at")
    parser.add_argument("--parity-batch", type=int, default=4096)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    proc = subprocess.run([sys.executable, "-c", PARITY, str(args.parity_batch), str(args.dim)], capture_output=True, text=True, check=True)
    parity = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"parity with OpenCLIP at batch {args.parity_batch} x {args.dim} (max abs difference):")
    for kind, diffs in parity.items():
        print(f"  {kind}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))

    rows = []
    print("\n| loss | batch | implementation | forward+backward s | peak memory above inputs (MiB) |")
    print("|---|---:|---|---:|---:|")
    for kind in args.losses:
        for batch in args.batches:
            impls = ["coembed-chunked"] + (["coembed-naive", "openclip"] if batch <= args.naive_max else [])
            for impl in impls:
                result = run_worker(impl, kind, batch, args.dim, args.threads, args.rounds)
                rows.append({"loss": kind, "batch": batch, "impl": impl, **result})
                if "error" in result:
                    print(f"| {kind} | {batch} | {impl} | failed: {result['error']} | |", flush=True)
                else:
                    print(f"| {kind} | {batch} | {impl} | {result['median_s']:.1f} | {result['extra_mib']:.0f} |", flush=True)
    ratios = {}
    for kind in args.losses:
        for batch in args.batches:
            by = {r["impl"]: r for r in rows if r["loss"] == kind and r["batch"] == batch and "error" not in r}
            if "coembed-chunked" in by and "openclip" in by:
                ratios[f"{kind}@{batch}"] = {"time_chunked_over_openclip": by["coembed-chunked"]["median_s"] / by["openclip"]["median_s"],
                                             "memory_openclip_over_chunked": by["openclip"]["extra_mib"] / by["coembed-chunked"]["extra_mib"]}
    for key, r in ratios.items():
        print(f"{key}: chunked time / OpenCLIP time {r['time_chunked_over_openclip']:.2f}, "
              f"OpenCLIP memory / chunked memory {r['memory_openclip_over_chunked']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"dim": args.dim, "threads": args.threads, "parity": parity, "rows": rows, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
