"""FLIP patch dropout's speed / quality trade-off on one core: R@1 against wall time at equal budgets.

The per-step metrics behind docs/benchmarks.md's patch-dropout rows (2 threads, bf16) were not kept,
so this measures again, on one math thread in fp32: `tiny` with the patch stem (FLIP drops patch
tokens; the settings are benchmarks/mae_init.py's contrastive ones) with patch dropout 0 and 0.5.
Two short probes, back to back, give the throughput ratio; the dropout run then gets the baseline's
steps times that ratio, i.e. about the same training wall time, and both validate on all patches.

    PYTHONPATH=. .venv/bin/python benchmarks/patch_dropout_plot.py --data /tmp/mae_shapes --work /tmp/pd_work \
        --baseline /tmp/mae_work/results.json --json docs/results/patch_dropout.json --plot docs/img/patch_dropout.png

``--baseline`` reuses mae_init.py's random-init run (the same settings) as the dropout-0 run;
without it the baseline is trained here first.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from mae_init import clip_sets
from train_runs import Results, cpu_name, run_train, value_at

from coembed.io import atomic_write_json
from coembed.viz import new_figure, save_png


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a `shapes` folder")
    p.add_argument("--work", required=True, help="scratch folder: run folders and results.json")
    p.add_argument("--baseline", help="benchmarks/mae_init.py's results.json: its random-init run is the dropout-0 run")
    p.add_argument("--prob", type=float, default=0.5)
    p.add_argument("--clip-steps", type=int, default=400, help="baseline steps when it is trained here")
    p.add_argument("--probe-steps", type=int, default=40)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--val-samples", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--plot", help="PNG: R@1 against wall time, and samples/s")
    return p.parse_args(argv)


def dropout_sets(sets: list[str], prob: float, steps: int) -> list[str]:
    """``sets`` with FLIP patch dropout ``prob`` and a final save at ``steps``."""
    kept = [s for s in sets if not s.startswith(("model.vision.patch_dropout=", "save_every="))]
    return [*kept, f"model.vision.patch_dropout={prob}", f"save_every={steps}"]


def baseline(args, results: Results) -> dict[str, Any]:
    if results.get("baseline") is None:
        if args.baseline:
            run = json.loads(Path(args.baseline).read_text())["random-init"]
        else:
            run = run_train(Path(args.work) / "baseline", "tiny", Path(args.data), args.clip_steps, clip_sets(args), args.threads)
        results.put("baseline", run)
    return results.get("baseline")


def probes(args, results: Results, sets: list[str]) -> dict[str, float]:
    """Samples/s of both settings over ``probe_steps``, one right after the other (no validation)."""
    if results.get("probes") is None:
        speeds = {}
        for prob in (0.0, args.prob):
            probe_sets = [*dropout_sets(sets, prob, args.probe_steps), "val_samples=0"]
            run = run_train(Path(args.work) / f"probe-{prob}", "tiny", Path(args.data), args.probe_steps, probe_sets, args.threads)
            speeds[str(prob)] = run["samples_per_s"]
        results.put("probes", speeds)
    return results.get("probes")


def table(results: Results, prob: float) -> str:
    base, drop, speeds = results.get("baseline"), results.get("dropout"), results.get("probes")
    end = min(base["wall_s"], drop["wall_s"])  # the budgets differ by the machine's drift: compare at the shorter
    rows = ["| patch dropout | steps | train wall s | CPU s | samples/s (probe) | samples/s (whole run) | best t2i R@1 | "
            f"t2i R@1 at {end:.0f} s | final t2i R@1 |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p, run in ((0.0, base), (prob, drop)):
        at = value_at(run["curve"], "time_s", end)
        at = run["curve"][-1]["t2i_r1"] if at is None and run["wall_s"] <= end else at
        rows.append(f"| {p} | {run['steps']} | {run['wall_s']:.0f} | {run['cpu_s']:.0f} | {speeds[str(p)]:.1f} | {run['samples_per_s']:.1f} | "
                    f"{max(x['t2i_r1'] for x in run['curve']):.3f} | {'' if at is None else format(at, '.3f')} | "
                    f"{run['curve'][-1]['t2i_r1']:.3f} |")
    return "\n".join(rows)


def plot(results: Results, prob: float, path: Path) -> None:
    fig = new_figure(12, 4.6, dpi=100)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    runs = {0.0: results.get("baseline"), prob: results.get("dropout")}
    for (p, run), color in zip(runs.items(), ("tab:blue", "tab:green")):
        ax.plot([x["time_s"] for x in run["curve"]], [x["t2i_r1"] for x in run["curve"]], marker="o", color=color,
                label=f"patch dropout {p} ({run['steps']} steps)")
    ax.axvline(min(run["wall_s"] for run in runs.values()), color="grey", lw=0.8, ls=":", label="the shorter run's end")
    ax.set(xlabel="training wall time, validation excluded (s, 1 core, fp32)", ylabel="val text-to-image R@1",
           title="Quality at equal wall time")
    ax.legend(fontsize=8)
    speeds = results.get("probes")
    values = [speeds[str(p)] for p in runs] + [run["samples_per_s"] for run in runs.values()]
    labels = [f"pd {p}, probe" for p in runs] + [f"pd {p}, whole run" for p in runs]
    bx.barh(range(4), values, color=["tab:blue", "tab:green"] * 2)
    bx.set_yticks(range(4), labels, fontsize=8)
    bx.invert_yaxis()
    ratio = speeds[str(prob)] / speeds["0.0"]
    bx.set(xlabel="training samples/s (batch 128)", title=f"Throughput: patch dropout {prob} = {ratio:.2f}x (probes)")
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = Results.in_folder(args.work)
    base = baseline(args, results)
    speeds = probes(args, results, base["sets"])
    ratio = speeds[str(args.prob)] / speeds["0.0"]
    steps = max(args.val_every, round(base["steps"] * ratio / 10) * 10)  # about the baseline's wall time
    results.put("setup", {"torch": torch.__version__, "threads": args.threads, "prob": args.prob, "ratio": ratio, "steps": steps,
                          "cpu": cpu_name()})
    if results.get("dropout") is None:
        results.put("dropout", run_train(Path(args.work) / f"dropout-{args.prob}", "tiny", Path(args.data), steps,
                                         dropout_sets(base["sets"], args.prob, steps), args.threads))
    print(table(results, args.prob))
    if args.plot:
        plot(results, args.prob, Path(args.plot))
    if args.json:
        atomic_write_json(Path(args.json), results.data)


if __name__ == "__main__":
    main()
