"""Helpers of the benchmarks that compare ``coembed train`` runs: one run per process, its validation
curve against steps and training wall time, and a results file a rerun continues from."""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from coembed.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]


class Results:
    """``results.json`` in the work folder, written after every finished run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    @classmethod
    def in_folder(cls, work: str | os.PathLike) -> "Results":
        """The results of the work folder ``work`` (created when missing)."""
        Path(work).mkdir(parents=True, exist_ok=True)
        return cls(Path(work) / "results.json")

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        atomic_write_json(self.path, self.data)


def env(threads: int) -> dict[str, str]:
    """The trainer's environment: ``threads`` math threads, offline, this checkout's coembed first."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def cpu_seconds() -> float:
    """User + system CPU time of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_train(out: Path, preset: str, data: Path, steps: int, sets: list[str], threads: int) -> dict[str, Any]:
    """``coembed train`` in its own process (``out`` is started afresh), then :func:`summarise` its log.

    ``wall_s`` runs from launch to the last checkpoint, validation excluded (start-up, BPE training
    and image decoding included); ``cpu_s`` is the process's CPU time (validation included), which a
    shared machine disturbs less than wall time.
    """
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "coembed.cli.main", "train", "--data", str(data), "--out", str(out), "--preset", preset,
           "--max-steps", str(steps), "--no-progress"]
    for item in sets:
        cmd += ["--set", item]
    start, cpu = time.time(), cpu_seconds()
    proc = subprocess.run(cmd, env=env(threads), capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"coembed train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = summarise(out, start)
    started = [line for line in proc.stderr.splitlines() if line.startswith("initialised ")]  # init_from's summary
    summary.update(preset=preset, steps=steps, sets=sets, cpu_s=round(cpu_seconds() - cpu, 1), warm_start=started[0] if started else None)
    return summary


def summarise(out: Path, start: float) -> dict[str, Any]:
    """Training speed, the loss and validation curves of a finished run; times in seconds since ``start``
    with the validation before each point subtracted."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    wall = (out / "checkpoint" / "train_state.json").stat().st_mtime - start
    speeds = [x["samples_per_s"] for x in lines if "samples_per_s" in x]
    curve, losses, validating = [], [], 0.0
    for x in lines:
        if "val_s" in x:
            validating += x["val_s"]
        if "val_t2i_r1" in x:
            curve.append({"step": x["step"], "time_s": round(x["time"] - start - validating, 1),
                          "t2i_r1": x["val_t2i_r1"], "i2t_r1": x["val_i2t_r1"]})
        elif "loss" in x:
            losses.append({"step": x["step"], "time_s": round(x["time"] - start - validating, 1), "loss": x["loss"]})
    return {"wall_s": round(wall - validating, 1), "validation_s": round(validating, 1),
            "samples_per_s": statistics.median(speeds[2:] or speeds), "curve": curve, "losses": losses}


def first_reaching(curve: list[dict], target: float) -> dict | None:
    """The first validation point with text-to-image R@1 >= ``target``, or None."""
    return next((p for p in curve if p["t2i_r1"] >= target), None)


def value_at(curve: list[dict], key: str, x: float, y: str = "t2i_r1") -> float | None:
    """``y`` at ``x`` on the curve (``key`` = "step" or "time_s"), linearly interpolated; None outside it."""
    for a, b in zip(curve, curve[1:]):
        if a[key] <= x <= b[key]:
            share = (x - a[key]) / (b[key] - a[key]) if b[key] > a[key] else 0.0
            return a[y] + share * (b[y] - a[y])
    return None


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"
