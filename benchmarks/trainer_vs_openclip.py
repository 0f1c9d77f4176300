"""Training speed and time-to-quality: coembed's trainer vs OpenCLIP's (``open_clip_train.main``).

Both train the same architecture (coembed's ``tiny-patch``: ViT width 128, 4 layers, patch 8 at
64 px; text transformer width 128, 3 layers, context 48; embedding 128) on the `shapes` training
split, batch 128, fp32, AdamW (lr, weight decay 0.1, betas 0.9/0.98, eps 1e-6), warm-up then cosine,
gradient clipping 1.0, the same threads. Every run is a separate process, launched one at a time.

1. **OpenCLIP** runs its own trainer on CSV data (one row per image, each pass over the images
   with the caption coembed's sampler would draw), with CLIP's BPE vocabulary (49,408) as its
   tokenizer requires and every caption padded to the context length. The number of rows is set
   so that the single epoch (and its cosine schedule) ends after ``--budget`` seconds, from a probe
   of its speed with 0 and 1 loader workers (the faster is used). Its final checkpoint is scored on
   the `shapes` val split: text-to-image R@1 over all 5 captions of the 1,000 images.
2. **Ablations**: short coembed runs that switch its speed-ups on one at a time, from a
   configuration that computes what OpenCLIP computes (CLIP-sized embedding table, text padded to
   the context, images decoded by a loader worker) to the fast one, and options beyond it
   (patch dropout, torch.compile, bf16 autocast, the chunked loss). samples/s is the median of the
   logged 10-step windows after the first two.
3. **Quality**: coembed runs sized to end in half OpenCLIP's time, validating on the same split
   with the same metric as they go; the time to OpenCLIP's R@1 is the launch-to-checkpoint wall
   time at the first validation that reaches it, minus the time spent validating.

Results are kept in ``--work``/results.json as they finish, so a rerun continues where it stopped.

    .venv-test/bin/coembed data shapes --out /tmp/tb/shapes
    .venv-test/bin/python benchmarks/trainer_vs_openclip.py --data /tmp/tb/shapes --work /tmp/tb/work \
        --json runs/trainer_vs_openclip.json --plot docs/img/trainer_vs_openclip.png
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import coembed
from coembed.data.datasets import read_samples
from coembed.eval.retrieval import retrieval_metrics
from coembed.interop.openclip import openclip_config
from coembed.io import atomic_write_json
from coembed.loading import default_preprocess
from coembed.viz import new_figure, save_png

PRESET = "tiny-patch"
OC_MODEL = "coembed-tiny-patch"
CLIP_VOCAB = 49408

# Launches OpenCLIP's trainer with the benchmark's model config registered.
OC_LAUNCH = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
             "from open_clip_train.main import main; main(sys.argv[2:])")
# Launches coembed's trainer; with "fixed-length" first, captions are padded to the context length
# and never trimmed (what OpenCLIP's tokenizer and text tower compute).
CE_LAUNCH = """
import sys
if sys.argv[1] == "fixed-length":
    import torch
    from coembed import tokenizer as tok_mod
    from coembed.towers import text_transformer as tt
    real_call = tok_mod.Tokenizer.__call__
    def padded(self, texts, context_length=77):
        ids = real_call(self, texts, context_length=context_length)
        return torch.nn.functional.pad(ids, (0, context_length - ids.shape[1]), value=self.pad_id)
    tok_mod.Tokenizer.__call__ = padded
    tt.trim_padding = lambda tokens, pad_id: tokens
from coembed.cli.main import main
sys.exit(main(sys.argv[2:]))
"""

# name -> (--set overrides, launcher mode); each row adds one change to the one above it.
ABLATIONS: dict[str, tuple[list[str], str]] = {
    "as OpenCLIP computes (CLIP-size vocab, padded text, loader worker)":
        ([f"model.text.vocab_size={CLIP_VOCAB}", "workers=1"], "fixed-length"),
    "+ text trimmed to the batch's longest caption": ([f"model.text.vocab_size={CLIP_VOCAB}", "workers=1"], "plain"),
    "+ vocabulary sized to the data (1,024)": (["workers=1"], "plain"),
    "+ images decoded once into RAM (cache_images)": (["cache_images=true", "workers=0"], "plain"),
    "+ FLIP patch dropout 0.5": (["cache_images=true", "workers=0", "model.vision.patch_dropout=0.5"], "plain"),
    "+ torch.compile (excl. ~1 min compile)": (["cache_images=true", "workers=0", "compile=true"], "plain"),
    "fast + bf16 autocast": (["cache_images=true", "workers=0", "precision=bf16"], "plain"),
    "fast + chunked loss (32 rows)": (["cache_images=true", "workers=0", "loss_chunk_size=32"], "plain"),
    "fast + bf16 + FLIP patch dropout 0.5": (["cache_images=true", "workers=0", "precision=bf16", "model.vision.patch_dropout=0.5"], "plain"),
    "fast + bf16 + torch.compile (excl. compile)": (["cache_images=true", "workers=0", "precision=bf16", "compile=true"], "plain"),
    "fast, measured again (noise check)": (["cache_images=true", "workers=0"], "plain"),
}
FAST = "+ images decoded once into RAM (cache_images)"
# name -> (the ablation row whose settings and speed it uses, start-up seconds to budget for).
QUALITY: dict[str, tuple[str, float]] = {
    "coembed fast, fp32": (FAST, 20.0),
    "coembed fast, bf16 autocast": ("fast + bf16 autocast", 20.0),
    "coembed fast, bf16 + patch dropout 0.5": ("fast + bf16 + FLIP patch dropout 0.5", 20.0),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a `shapes` folder (coembed data shapes)")
    p.add_argument("--work", required=True, help="scratch folder: CSV, runs, results.json")
    p.add_argument("--budget", type=float, default=600.0, help="OpenCLIP's training wall time in seconds")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--probe-steps", type=int, default=40)
    p.add_argument("--ablation-steps", type=int, default=80)
    p.add_argument("--pair-rounds", type=int, default=3)
    p.add_argument("--only", choices=["probe", "openclip", "ablations", "quality", "pairs"], action="append",
                   help="run only these stages (default: all)")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--plot", help="PNG: R@1 against wall time, and samples/s per configuration")
    return p.parse_args(argv)


class Results:
    """``results.json`` in the work folder, written after every finished run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, *keys: str) -> Any:
        node = self.data
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node

    def put(self, value: Any, *keys: str) -> None:
        node = self.data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        atomic_write_json(self.path, self.data)


def env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# ----------------------------------------------------------------------------- OpenCLIP side


def write_model_config(folder: Path) -> Path:
    """OpenCLIP's JSON for coembed's ``tiny-patch``, with CLIP's tokenizer (vocabulary 49,408,
    pooled at the end-of-text token, the highest id)."""
    model = coembed.create_model(PRESET)
    cfg = openclip_config(model, default_preprocess(model))[0]["model_cfg"]
    text = cfg["text_cfg"]
    text.update(vocab_size=CLIP_VOCAB, pool_type="argmax")
    text.pop("eos_id", None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{OC_MODEL}.json"
    path.write_text(json.dumps(cfg, indent=2))
    return folder


def write_csv(data: Path, path: Path, rows: int, seed: int = 0) -> int:
    """``rows`` (image, caption) rows over the training images, pass after pass, each pass with the
    caption coembed's sampler draws for that epoch (coembed.data.datasets.ImageTextDataset.caption)."""
    train = data / "train"
    samples, _ = read_samples(train)
    with open(path, "w", newline="") as f:
        out = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL)
        out.writerow(["filepath", "title"])
        n = 0
        for epoch in range(math.ceil(rows / len(samples))):
            for index, s in enumerate(samples):
                if n == rows:
                    break
                rng = random.Random((seed * 1_000_003 + epoch) * 10_000_019 + index)
                out.writerow([str((train / s.image).resolve()), s.captions[rng.randrange(len(s.captions))]])
                n += 1
    return n


def run_openclip(args, config_dir: Path, csv_path: Path, name: str, workers: int, precision: str = "fp32") -> dict[str, Any]:
    """One epoch of OpenCLIP's trainer over ``csv_path``; wall time from launch to the checkpoint."""
    logs = Path(args.work) / "openclip"
    shutil.rmtree(logs / name, ignore_errors=True)
    cmd = [sys.executable, "-c", OC_LAUNCH, str(config_dir), "--model", OC_MODEL, "--train-data", str(csv_path),
           "--dataset-type", "csv", "--csv-img-key", "filepath", "--csv-caption-key", "title",
           "--batch-size", str(args.batch), "--lr", str(args.lr), "--wd", "0.1", "--warmup", str(args.warmup),
           "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--grad-clip-norm", "1.0",
           "--epochs", "1", "--precision", precision, "--workers", str(workers), "--seed", "0",
           "--logs", str(logs), "--name", name, "--save-frequency", "1", "--log-every-n-steps", "10",
           "--report-to", "", "--device", "cpu"]
    start = time.time()
    proc = subprocess.run(cmd, env=env(args.threads), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"OpenCLIP trainer failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    ckpt = logs / name / "checkpoints" / "epoch_1.pt"
    log_text = (logs / name / "out.log").read_text()
    batch_times = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+)", log_text)]
    data_times = [float(x) for x in re.findall(r"Data \(t\): ([0-9.]+)", log_text)]
    steady = batch_times[2:] or batch_times
    return {"wall_s": ckpt.stat().st_mtime - start, "samples_per_s": args.batch / statistics.median(steady),
            "data_wait_share": statistics.median(d / b for d, b in zip(data_times[2:], batch_times[2:])) if steady else None,
            "windows": len(batch_times), "checkpoint": str(ckpt), "workers": workers, "precision": precision}


@torch.no_grad()
def score_openclip(checkpoint: str, config_dir: Path, data: Path) -> dict[str, float]:
    """R@1/5/10 of an OpenCLIP checkpoint on the val split, with coembed's retrieval metric."""
    import open_clip
    from PIL import Image

    open_clip.add_model_config(config_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(OC_MODEL)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    model.eval()
    tokenizer = open_clip.get_tokenizer(OC_MODEL)
    root = data / "val"
    samples, _ = read_samples(root)
    images = torch.stack([preprocess(Image.open(root / s.image).convert("RGB")) for s in samples])
    captions = [c for s in samples for c in s.captions]
    owner = torch.tensor([i for i, s in enumerate(samples) for _ in s.captions])
    image_emb = torch.cat([model.encode_image(b, normalize=True) for b in images.split(256)])
    text_emb = torch.cat([model.encode_text(tokenizer(captions[i:i + 256]), normalize=True) for i in range(0, len(captions), 256)])
    r = retrieval_metrics(image_emb, text_emb, owner, ks=(1, 5, 10))
    return {"t2i_r1": r["image_retrieval_recall@1"], "i2t_r1": r["text_retrieval_recall@1"],
            "t2i_r5": r["image_retrieval_recall@5"], "t2i_r10": r["image_retrieval_recall@10"]}


# ----------------------------------------------------------------------------- coembed side


def run_coembed(args, name: str, sets: list[str], mode: str, steps: int, val_every: int) -> dict[str, Any]:
    """``coembed train`` in its own process; speed from metrics.jsonl, val R@1 against wall time."""
    out = Path(args.work) / "coembed" / re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    shutil.rmtree(out, ignore_errors=True)
    base = [f"batch_size={args.batch}", f"lr={args.lr}", f"warmup_steps={args.warmup}", "precision=fp32",
            f"val_every={val_every}", f"save_every={steps}", "log_every=10"]
    cmd = [sys.executable, "-c", CE_LAUNCH, mode, "train", "--data", str(args.data), "--out", str(out), "--preset", PRESET,
           "--max-steps", str(steps), "--no-progress"]
    for item in base + sets:
        cmd += ["--set", item]
    start = time.time()
    proc = subprocess.run(cmd, env=env(args.threads), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"coembed trainer failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    wall = (out / "checkpoint" / "train_state.json").stat().st_mtime - start
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [x["samples_per_s"] for x in lines if "samples_per_s" in x]
    curve, validating = [], 0.0
    for x in lines:
        if "val_t2i_r1" in x:
            validating += x["val_s"]
            curve.append({"step": x["step"], "time_s": x["time"] - start - validating,
                          "t2i_r1": x["val_t2i_r1"], "i2t_r1": x["val_i2t_r1"]})
    return {"sets": sets, "mode": mode, "steps": steps, "wall_s": wall - validating, "validation_s": validating,
            "samples_per_s": statistics.median(speeds[2:] or speeds), "curve": curve}


def time_to(curve: list[dict], target: float) -> float | None:
    """Wall time (validation excluded) of the first validation with t2i R@1 >= ``target``."""
    return next((p["time_s"] for p in curve if p["t2i_r1"] >= target), None)


# ----------------------------------------------------------------------------- stages


def probe_csv(args) -> tuple[Path, int]:
    """The short CSV of the probes and pairs (``--probe-steps`` batches), written once."""
    path, rows = Path(args.work) / "probe.csv", args.probe_steps * args.batch
    if not path.exists() or sum(1 for _ in open(path)) != rows + 1:
        write_csv(Path(args.data), path, rows)
    return path, rows


def stage_openclip(args, results: Results, config_dir: Path) -> None:
    work = Path(args.work)
    csv_path, probe_rows = probe_csv(args)
    for workers in (0, 1):
        if results.get("openclip", "probe", str(workers)) is None:
            probe = run_openclip(args, config_dir, csv_path, f"probe-w{workers}", workers)
            results.put({**probe, "rows": probe_rows}, "openclip", "probe", str(workers))
            print(f"OpenCLIP probe, {workers} loader workers: {probe['samples_per_s']:.1f} samples/s", flush=True)
    if results.get("openclip", "probe_bf16") is None:
        # OpenCLIP's bf16 autocast, for the row of coembed's bf16 training (same precision).
        probe = run_openclip(args, config_dir, csv_path, "probe-w1-bf16", 1, precision="amp_bf16")
        results.put(probe, "openclip", "probe_bf16")
        print(f"OpenCLIP probe, amp_bf16: {probe['samples_per_s']:.1f} samples/s", flush=True)
    if "openclip" not in args.stages or results.get("openclip", "run") is not None:
        return
    probes = results.get("openclip", "probe")
    workers = max(probes, key=lambda w: probes[w]["samples_per_s"])
    rows = int(args.budget * probes[workers]["samples_per_s"]) // args.batch * args.batch
    write_csv(Path(args.data), work / "train.csv", rows)
    run = run_openclip(args, config_dir, work / "train.csv", "run", int(workers))
    run.update(rows=rows, steps=rows // args.batch, **score_openclip(run["checkpoint"], config_dir, Path(args.data)))
    results.put(run, "openclip", "run")
    print(f"OpenCLIP: {rows} samples in {run['wall_s']:.0f} s, {run['samples_per_s']:.1f} samples/s, "
          f"t2i R@1 {run['t2i_r1']:.3f}", flush=True)


def stage_ablations(args, results: Results) -> None:
    for name, (sets, mode) in ABLATIONS.items():
        if results.get("ablations", name) is None:
            run = run_coembed(args, name, sets, mode, args.ablation_steps, val_every=10**9)
            results.put(run, "ablations", name)
            print(f"{name}: {run['samples_per_s']:.1f} samples/s", flush=True)


# name -> (OpenCLIP precision, coembed ablation row) of the alternating speed pairs.
PAIRS = {"fp32": ("fp32", FAST), "bf16": ("amp_bf16", "fast + bf16 autocast")}


def stage_pairs(args, results: Results, config_dir: Path) -> None:
    """Short runs of OpenCLIP and coembed back to back, ``--pair-rounds`` times: the machine's speed
    drifts by ~15% between minutes, so the ratio is taken within each pair and its median reported."""
    csv_path, _ = probe_csv(args)
    for name, (precision, row) in PAIRS.items():
        done = results.get("pairs", name) or []
        for r in range(len(done), args.pair_rounds):
            oc = run_openclip(args, config_dir, csv_path, f"pair-{precision}", 1, precision=precision)
            sets, mode = ABLATIONS[row]
            ce = run_coembed(args, f"pair {name}", sets, mode, args.probe_steps, val_every=10**9)
            done.append({"openclip": oc["samples_per_s"], "coembed": ce["samples_per_s"], "ratio": ce["samples_per_s"] / oc["samples_per_s"]})
            results.put(done, "pairs", name)
            print(f"pair {name} round {r}: OpenCLIP {oc['samples_per_s']:.1f}, coembed {ce['samples_per_s']:.1f} samples/s "
                  f"({done[-1]['ratio']:.2f}x)", flush=True)


def stage_quality(args, results: Results) -> None:
    oc = results.get("openclip", "run")
    if oc is None or any(results.get("ablations", row) is None for row, _ in QUALITY.values()):
        raise SystemExit("the quality stage needs the openclip and ablations stages first")
    for name, (row, startup) in QUALITY.items():
        if results.get("quality", name) is not None:
            continue
        # Steps that end in about half OpenCLIP's wall time at this configuration's measured speed,
        # after its start-up (BPE training, decoding the images).
        speed = results.get("ablations", row)
        steps = max(100, int((oc["wall_s"] / 2 - startup) * speed["samples_per_s"] / args.batch))
        run = run_coembed(args, name, speed["sets"], "plain", steps, val_every=max(10, steps // 12 // 10 * 10))
        run["time_to_openclip_r1_s"] = time_to(run["curve"], oc["t2i_r1"])
        results.put(run, "quality", name)
        print(f"{name}: {steps} steps, final t2i R@1 {run['curve'][-1]['t2i_r1']:.3f}, reaches OpenCLIP's "
              f"{oc['t2i_r1']:.3f} at {run['time_to_openclip_r1_s']} s", flush=True)


# ----------------------------------------------------------------------------- report


def table(results: Results) -> str:
    oc = results.get("openclip", "run") or {}
    rows = ["| configuration | samples/s | vs OpenCLIP |", "|---|---:|---:|"]
    base = oc.get("samples_per_s")
    if base:
        rows.append(f"| OpenCLIP `open_clip_train.main` ({oc['workers']} loader workers) | {base:.1f} | 1.00x |")
    for name, run in (results.get("ablations") or {}).items():
        ratio = f"{run['samples_per_s'] / base:.2f}x" if base else ""
        rows.append(f"| coembed {name} | {run['samples_per_s']:.1f} | {ratio} |")
    lines = ["\n".join(rows)]
    if results.get("pairs"):
        p = ["| back-to-back pairs | OpenCLIP samples/s | coembed samples/s | coembed / OpenCLIP (median of pairs) |", "|---|---:|---:|---:|"]
        for name, done in results.get("pairs").items():
            each = ", ".join(format(d["ratio"], ".2f") for d in done)
            p.append(f"| {name} | {statistics.median(d['openclip'] for d in done):.1f} | {statistics.median(d['coembed'] for d in done):.1f} | "
                     f"{statistics.median(d['ratio'] for d in done):.2f}x ({each}) |")
        lines.append("\n".join(p))
    if oc.get("t2i_r1") is not None:
        q = ["| run | steps | wall s | t2i R@1 | i2t R@1 | s to OpenCLIP's R@1 | vs OpenCLIP's time |", "|---|---:|---:|---:|---:|---:|---:|",
             f"| OpenCLIP | {oc['steps']} | {oc['wall_s']:.0f} | {oc['t2i_r1']:.3f} | {oc['i2t_r1']:.3f} | {oc['wall_s']:.0f} | 1.00x |"]
        for name, run in (results.get("quality") or {}).items():
            last, t = run["curve"][-1], run["time_to_openclip_r1_s"]
            reached = ("not reached", "") if t is None else (f"{t:.0f}", f"{t / oc['wall_s']:.2f}x")
            q.append(f"| {name} | {run['steps']} | {run['wall_s']:.0f} | {last['t2i_r1']:.3f} | {last['i2t_r1']:.3f} | "
                     f"{reached[0]} | {reached[1]} |")
        lines.append("\n".join(q))
    return "\n\n".join(lines)


def plot(results: Results, path: Path) -> None:
    fig = new_figure(12, 4.8, dpi=100)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
    oc = results.get("openclip", "run")
    for name, run in (results.get("quality") or {}).items():
        ax.plot([p["time_s"] for p in run["curve"]], [p["t2i_r1"] for p in run["curve"]], marker="o", label=name)
    if oc:
        ax.scatter([oc["wall_s"]], [oc["t2i_r1"]], color="black", marker="*", s=160, zorder=3, label="OpenCLIP (end of its run)")
        ax.axhline(oc["t2i_r1"], color="black", lw=0.8, ls="--")
        ax.axvline(oc["wall_s"] / 2, color="grey", lw=0.8, ls=":", label="half OpenCLIP's time")
    ax.set(xlabel="wall time from launch, validation excluded (s)", ylabel="text-to-image R@1 (val, 1,000 images)",
           title="Time to quality")
    ax.legend(fontsize=8)
    names, speeds = ["OpenCLIP"], [oc["samples_per_s"] if oc else 0.0]
    for name, run in (results.get("ablations") or {}).items():
        names.append(name if len(name) < 48 else name[:45] + "...")
        speeds.append(run["samples_per_s"])
    bx.barh(range(len(names)), speeds, color=["black"] + ["tab:blue"] * (len(names) - 1))
    bx.set_yticks(range(len(names)), names, fontsize=7)
    bx.invert_yaxis()
    bx.set(xlabel="training samples/s (batch 128, 2 threads; fp32 unless named)", title="Training throughput")
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.stages = args.only or ["probe", "openclip", "ablations", "quality", "pairs"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = Results(work / "results.json")
    results.put({"torch": torch.__version__, "threads": args.threads, "batch": args.batch, "lr": args.lr,
                 "warmup": args.warmup, "budget_s": args.budget, "cpu": _cpu_name()}, "setup")
    config_dir = write_model_config(work / "openclip_config")
    if {"probe", "openclip"} & set(args.stages):
        stage_openclip(args, results, config_dir)
    if "ablations" in args.stages:
        stage_ablations(args, results)
    if "quality" in args.stages:
        stage_quality(args, results)
    if "pairs" in args.stages:
        stage_pairs(args, results, config_dir)
    print(table(results))
    if args.json:
        atomic_write_json(Path(args.json), results.data)
    if args.plot:
        plot(results, Path(args.plot))


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
