"""Does MAE initialisation of the image tower reach the demo's R@1 sooner than random initialisation?

Issue 7.5. On `shapes` at the demo's size: MAE-pretrain `mae-tiny` (tiny's ViT with the patch stem)
on the training images for a fixed number of steps, then train two contrastive `tiny` dual encoders
with the patch stem and identical settings (seed, steps, schedule, data order): one warm-started
from the MAE checkpoint (``init_from`` + ``init_prefixes: ["visual."]``), one from random weights.
Records validation text-to-image R@1 against steps and against training wall time (validation
excluded; the MAE run's whole wall time is added to the MAE-initialised curve), and when each first
reaches the demo's bar (0.40). Last, a linear probe of shape and colour on the frozen towers (random,
after MAE, after each contrastive run) shows what the MAE features hold.

    PYTHONPATH=. .venv/bin/python benchmarks/mae_init.py --data /tmp/mae_shapes --work /tmp/mae_work \
        --json docs/results/mae_init.json --plot docs/img/mae_init.png

Generates the data when ``--data`` holds none; ``results.json`` in ``--work`` lets a rerun continue
(``--only STAGE`` reruns one stage). One math thread per run, one run at a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from train_runs import Results, cpu_name, env, first_reaching, run_train, value_at

import coembed
from coembed.data.datasets import ImageTextDataset, read_samples
from coembed.eval.linear_probe import linear_probe
from coembed.io import atomic_write_json
from coembed.transforms import ImageTransform
from coembed.viz import new_figure, save_png

DATA = {"train": 20000, "val": 1000, "test": 0, "heldout": 0}  # the demo's training and validation sizes
TARGETS = (0.05, 0.1, 0.15, 0.4)  # R@1 levels whose first crossing is reported; 0.40 is the demo's bar
STAGES = ("mae", "mae-init", "random-init")  # training runs, in order; then the "probe" of the towers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a `shapes` folder (generated here when missing)")
    p.add_argument("--work", required=True, help="scratch folder: run folders and results.json")
    p.add_argument("--mae-steps", type=int, default=500)
    p.add_argument("--clip-steps", type=int, default=400)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", choices=(*STAGES, "probe"), action="append", help="run only these stages (default: all not yet done)")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--plot", help="PNG: R@1 against steps and against wall time, and the MAE loss")
    return p.parse_args(argv)


def common_sets(args) -> list[str]:
    """Settings every run shares: the demo's batch, one-core loading, fp32 (what `auto` picks without native bf16)."""
    return [f"batch_size={args.batch}", "precision=fp32", "cache_images=true", "workers=0", "seed=0", "log_every=10"]


def mae_sets(args) -> list[str]:
    # MAE's AdamW (betas 0.9/0.95, weight decay 0.05); a higher lr than MAE's 1.5e-4 x batch/256 for
    # a tiny model and a short schedule. No validation: the MAE has no retrieval to score.
    return [*common_sets(args), "lr=1.5e-3", "warmup_steps=40", "weight_decay=0.05", "betas=[0.9, 0.95]",
            "val_samples=0", f"save_every={args.mae_steps}"]


def clip_sets(args) -> list[str]:
    # The demo's contrastive settings (coembed/cli/demo.py), with the patch stem MAE needs.
    return [*common_sets(args), "model.vision.stem=patch", "lr=2e-3", "warmup_steps=60", "weight_decay=0.1",
            f"val_every={args.val_every}", f"val_samples={args.val_samples}", f"save_every={args.clip_steps}"]


def ensure_data(args) -> None:
    if (Path(args.data) / "meta.json").is_file():
        return
    cmd = [sys.executable, "-m", "coembed.cli.main", "data", "shapes", "--out", args.data, "--workers", "1"]
    for key, value in DATA.items():
        cmd += [f"--{key}", str(value)]
    subprocess.run(cmd, env=env(args.threads), check=True)


def run_stage(args, stage: str) -> dict[str, Any]:
    work, data = Path(args.work), Path(args.data)
    if stage == "mae":
        return run_train(work / "mae", "mae-tiny", data, args.mae_steps, mae_sets(args), args.threads)
    init = [f"init_from={work / 'mae'}", "init_prefixes=visual."] if stage == "mae-init" else []
    return run_train(work / stage, "tiny", data, args.clip_steps, clip_sets(args) + init, args.threads)


def single_object_images(data: Path, count: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The first ``count`` one-object training images, preprocessed, with their shape and colour labels."""
    samples, _ = read_samples(data / "train")
    singles = [s for s in samples if len(s.meta["objects"]) == 1][:count]
    meta = json.loads((data / "meta.json").read_text())
    labels = {k: torch.tensor([meta[k + "s"].index(s.meta["objects"][0][k]) for s in singles]) for k in ("shape", "color")}
    dataset = ImageTextDataset(data / "train", singles, ImageTransform(64))
    return torch.stack([dataset[i][1] for i in range(len(singles))]), labels  # items: (index, image, caption, ...)


@torch.no_grad()
def pooled_patches(visual: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Mean of the tower's patch tokens after ``ln_post`` (all patches, eval mode): (N, width)."""
    visual.eval()
    return torch.cat([visual.forward_features(chunk)[:, 1:].mean(1) for chunk in images.split(250)])


def probe_towers(args) -> dict[str, dict[str, float]]:
    """Linear-probe shape and colour accuracy (train 2,000 / val 500 / test 500 one-object images) of the
    frozen image towers: random, after MAE, and at the end of each contrastive run."""
    torch.set_num_threads(args.threads)
    images, labels = single_object_images(Path(args.data), 3000)
    torch.manual_seed(0)
    towers = {"random (fresh tiny, patch stem)": coembed.create_model("tiny", **{"vision.stem": "patch"}).visual}
    for name, folder in (("after MAE", "mae"), ("mae-init, end of contrastive run", "mae-init"),
                         ("random-init, end of contrastive run", "random-init")):
        towers[name] = coembed.load(Path(args.work) / folder).model.visual
    out = {}
    for name, visual in towers.items():
        x = pooled_patches(visual, images)
        out[name] = {k: linear_probe(x[:2000], y[:2000], x[2000:2500], y[2000:2500], x[2500:], y[2500:])["acc1"]
                     for k, y in labels.items()}
    return out


def crossings(run: dict, offset: float) -> dict[str, Any]:
    """Step and wall time (``offset`` added) of each target's first crossing, and the best R@1."""
    out: dict[str, Any] = {"best_t2i_r1": max(p["t2i_r1"] for p in run["curve"]), "final_t2i_r1": run["curve"][-1]["t2i_r1"]}
    for target in TARGETS:
        point = first_reaching(run["curve"], target)
        out[f"r1_{target:.2f}"] = None if point is None else {"step": point["step"], "time_s": round(point["time_s"] + offset, 1)}
    return out


def compare(results: Results) -> dict[str, Any]:
    mae, warm, cold = (results.get(s) for s in STAGES)
    offset = mae["wall_s"]
    summary = {"mae_wall_s": offset, "mae_cpu_s": mae["cpu_s"], "mae-init": crossings(warm, offset), "random-init": crossings(cold, 0.0)}
    # R@1 of each run once the same total time has passed: the random run's end, MAE time included.
    budget = cold["wall_s"]
    summary["at_random_run_end_s"] = {"time_s": budget, "mae-init": value_at([{**p, "time_s": p["time_s"] + offset} for p in warm["curve"]], "time_s", budget),
                                      "random-init": cold["curve"][-1]["t2i_r1"]}
    return summary


def table(results: Results) -> str:
    s = results.get("summary")
    rows = ["| run | steps | train wall s | CPU s | best t2i R@1 | final t2i R@1 | "
            + " | ".join(f"first >= {t:.2f}: step / s" for t in TARGETS) + " |",
            "|---|---:|---:|---:|---:|---:|" + "---:|" * len(TARGETS)]
    mae = results.get("mae")
    rows.append(f"| MAE pre-training (mae-tiny) | {mae['steps']} | {mae['wall_s']:.0f} | {mae['cpu_s']:.0f} |" + " |" * (2 + len(TARGETS)))
    for name in ("mae-init", "random-init"):
        run, c = results.get(name), s[name]
        cells = [("not reached" if c[f"r1_{t:.2f}"] is None else f"{c[f'r1_{t:.2f}']['step']} / {c[f'r1_{t:.2f}']['time_s']:.0f}") for t in TARGETS]
        wall = run["wall_s"] + (s["mae_wall_s"] if name == "mae-init" else 0.0)
        rows.append(f"| {name} | {run['steps']} | {wall:.0f} | {run['cpu_s']:.0f} | {c['best_t2i_r1']:.3f} | {c['final_t2i_r1']:.3f} | "
                    + " | ".join(cells) + " |")
    return "\n".join(rows)


def plot(results: Results, path: Path) -> None:
    fig = new_figure(15, 4.6, dpi=100)
    steps_ax, time_ax, loss_ax = fig.subplots(1, 3)
    offset = results.get("mae")["wall_s"]
    for name, color in (("mae-init", "tab:orange"), ("random-init", "tab:blue")):
        curve, shift = results.get(name)["curve"], offset if name == "mae-init" else 0.0
        r1 = [p["t2i_r1"] for p in curve]
        steps_ax.plot([p["step"] for p in curve], r1, marker="o", color=color, label=name)
        time_ax.plot([p["time_s"] + shift for p in curve], r1, marker="o", color=color, label=name + (" (MAE time included)" if shift else ""))
    time_ax.axvspan(0, offset, color="tab:orange", alpha=0.1, label="MAE pre-training")
    for ax, xlabel in ((steps_ax, "contrastive step (batch 128)"), (time_ax, "training wall time, validation excluded (s, 1 core)")):
        ax.axhline(0.40, color="black", lw=0.8, ls="--", label="demo bar 0.40")
        ax.set(xlabel=xlabel, ylabel=f"val text-to-image R@1 ({results.get('setup')['val_samples']:,} images)")
        ax.legend(fontsize=8)
    steps_ax.set_title("R@1 per contrastive step")
    time_ax.set_title("R@1 per second (MAE cost counted)")
    losses = results.get("mae")["losses"]
    loss_ax.plot([p["step"] for p in losses], [p["loss"] for p in losses], color="tab:orange")
    loss_ax.set(xlabel="MAE step (batch 128)", ylabel="masked-patch MSE (normalised pixels)", title="MAE pre-training loss")
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = Results.in_folder(args.work)
    results.put("setup", {"torch": torch.__version__, "threads": args.threads, "batch": args.batch, "mae_steps": args.mae_steps,
                          "clip_steps": args.clip_steps, "val_every": args.val_every, "val_samples": args.val_samples,
                          "data": DATA, "cpu": cpu_name(), "mae_sets": mae_sets(args), "clip_sets": clip_sets(args)})
    ensure_data(args)
    for stage in STAGES:
        if stage in (args.only or []) or (not args.only and results.get(stage) is None):
            run = run_stage(args, stage)
            results.put(stage, run)
            print(f"{stage}: {run['steps']} steps, {run['wall_s']:.0f} s training, {run['cpu_s']:.0f} CPU s"
                  + (f", best t2i R@1 {max(p['t2i_r1'] for p in run['curve']):.3f}" if run["curve"] else ""), flush=True)
    if all(results.get(s) for s in STAGES):
        if "probe" in (args.only or []) or (not args.only and results.get("probe") is None):
            results.put("probe", probe_towers(args))
        results.put("summary", compare(results))
        print(table(results))
        print(json.dumps({"summary": results.get("summary"), "probe": results.get("probe")}, indent=2))
        if args.plot:
            plot(results, Path(args.plot))
    if args.json:
        atomic_write_json(Path(args.json), results.data)


if __name__ == "__main__":
    main()
