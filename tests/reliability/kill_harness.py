"""SIGKILL a coembed job at a chosen moment, then check what it left on disk.

Used by ``tests/reliability/test_kill.py`` (a few seeds in CI) and runnable as a script for the figures
of docs/reliability.md (many seeds)::

    python tests/reliability/kill_harness.py --seeds 30 --json

Two ways to kill:

- at a random moment (:func:`kill_after`): the job runs as ``python -m coembed ...`` and receives
  SIGKILL after a seeded random delay; no cleanup code of ours runs;
- at a named point of the checkpoint protocol (:data:`KILL_POINTS`): the job runs under a wrapper that
  patches one function of the checkpoint writer to SIGKILL the process right there, so every step of
  the protocol is covered for certain rather than by chance.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Same thread count in every run: the reference and the resumed run must add up their floats in
# the same order to be bit-identical.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}

# Points of the checkpoint protocol (coembed.train.state.save_run_checkpoint -> checkpoint.publish_folder)
# where the wrapper kills the process during the N-th checkpoint save. The comment says which checkpoint
# must be found afterwards.
KILL_POINTS = {
    "model_staged": "model.safetensors and config.json are in the staging folder; the state is not",  # old
    "state_torn": "half of train_state.safetensors is written in the staging folder",  # old
    "old_aside": "the old checkpoint is renamed to checkpoint.old; the new one is not in place",  # old, via .old
    "new_in_place": "the new checkpoint is in place; checkpoint.old is not removed yet",  # new
    "metrics_torn": "half of a metrics.jsonl line is written",  # (metrics only)
}

WRAPPER = textwrap.dedent("""
    import os, signal, sys
    point, nth = sys.argv[1], int(sys.argv[2])
    sys.argv = ["coembed", *sys.argv[3:]]
    import coembed.checkpoint as checkpoint
    import coembed.train.state as state
    import coembed.train.loop as loop

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    saves = [0]
    real_save = state.save_run_checkpoint
    def counting_save(*args, **kwargs):
        saves[0] += 1
        return real_save(*args, **kwargs)
    loop.save_run_checkpoint = counting_save

    def at_nth():
        return saves[0] == nth

    if point == "model_staged":
        real = state.save_model_files
        def patched(*a, **k):
            real(*a, **k)
            if at_nth(): die()
        state.save_model_files = patched
    elif point == "state_torn":
        real = state.write_tensors
        def patched(path, tensors, metadata=None):
            real(path, tensors, metadata)
            if at_nth() and path.name == "train_state.safetensors":
                data = path.read_bytes()
                path.write_bytes(data[: len(data) // 2])
                die()
        state.write_tensors = patched
    elif point in ("old_aside", "new_in_place"):
        real_replace = os.replace
        def patched(src, dst):
            real_replace(src, dst)
            name = os.path.basename(os.fspath(dst))
            if at_nth() and ((point == "old_aside" and name == "checkpoint.old") or (point == "new_in_place" and name == "checkpoint")):
                die()
        checkpoint.os.replace = patched
    elif point == "metrics_torn":
        real_write = loop.MetricsLog.write
        lines = [0]
        def patched(self, record):
            lines[0] += 1
            if lines[0] == nth:
                with self.path.open("a") as f:
                    text = loop.json.dumps(record) + "\\n"
                    f.write(text[: len(text) // 2])
                die()
            real_write(self, record)
        loop.MetricsLog.write = patched
    from coembed.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


@dataclass
class Killed:
    """What a killed job left: whether it was really killed, and when."""

    returncode: int
    seconds: float
    stderr: str

    @property
    def was_killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def coembed_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "coembed", *args]


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command to the end; fail loudly with its stderr if it fails."""
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def _wait_ready(proc: subprocess.Popen, ready: Callable[[], bool] | None) -> None:
    """Poll until ``ready()`` holds or the process ends."""
    while ready is not None and proc.poll() is None and not ready():
        time.sleep(0.01)


def work_window(cmd: list[str], ready: Callable[[], bool], done: Callable[[], bool], timeout: float = 600) -> float:
    """Run ``cmd`` to the end; return the seconds from when ``ready()`` first held to when ``done()``
    first held: the window in which the job does the work a kill should interrupt."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_ready(proc, ready)
    at_ready = time.perf_counter()
    _wait_ready(proc, done)
    window = time.perf_counter() - at_ready
    _, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-3000:]}")
    return window


def kill_after(cmd: list[str], delay: float, ready: Callable[[], bool] | None = None, timeout: float = 600) -> Killed:
    """Start ``cmd`` and SIGKILL it ``delay`` seconds after ``ready()`` first holds (after the start
    without ``ready``), or let it finish if it is faster. ``ready`` tells when the work itself has
    begun (a first metrics line, a store file), so start-up time does not eat the random moments."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_ready(proc, ready)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=timeout)
    return Killed(proc.returncode, time.perf_counter() - start, err)


def metrics_started(out: Path) -> Callable[[], bool]:
    """Training has begun: ``metrics.jsonl`` holds a line."""
    path = out / "metrics.jsonl"
    return lambda: path.exists() and path.stat().st_size > 0


def checkpoint_at(out: Path, step: int) -> Callable[[], bool]:
    """The run's checkpoint of ``step`` is published."""
    def done() -> bool:
        try:
            return json.loads((out / "checkpoint" / "train_state.json").read_text())["progress"]["step"] >= step
        except (OSError, ValueError, KeyError):
            return False
    return done


def file_exists(path: Path) -> Callable[[], bool]:
    return path.exists


def store_holds(db: Path, files: int) -> Callable[[], bool]:
    """The store at ``db`` has committed ``files`` files (read while the job writes: SQLite WAL)."""
    import sqlite3

    def done() -> bool:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as conn:
                return conn.execute("SELECT count(*) FROM files").fetchone()[0] >= files
        except sqlite3.Error:
            return False
    return done


def kill_at_point(point: str, nth: int, *args: str, timeout: float = 600) -> Killed:
    """Run ``coembed ARGS`` under the wrapper that SIGKILLs it at ``point`` of the ``nth`` save."""
    if point not in KILL_POINTS:
        raise ValueError(f"unknown kill point {point!r}; known: {', '.join(KILL_POINTS)}")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, point, str(nth), *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    return Killed(done.returncode, time.perf_counter() - start, done.stderr)


def random_delay(seed: int, low: float, high: float) -> float:
    return random.Random(seed).uniform(low, high)


# ---- what a killed training run left -------------------------------------------------------------


@dataclass
class TrainingState:
    """The checkpoint a killed run left, and the phase the kill landed in."""

    checkpoint: Path | None  # the folder resolve() finds, None if no checkpoint was ever published
    step: int | None  # its train_state.json step
    logged_steps: list[int]  # steps of the complete metrics.jsonl lines
    phase: str  # before the first checkpoint / during a checkpoint write / while publishing / between writes


def inspect_training_run(out: Path) -> TrainingState:
    """Check the on-disk state of a killed training run and describe it.

    Raises AssertionError if any published file is incomplete: a checkpoint that does not load whole,
    a JSON file that does not parse, or a metrics line that is neither complete nor the torn last one.
    """
    from coembed.checkpoint import resolve
    from coembed.errors import CheckpointError
    from coembed.loading import load

    if (out / "train_config.json").exists():
        json.loads((out / "train_config.json").read_text())
    logged = _complete_metric_steps(out / "metrics.jsonl")
    try:
        folder = resolve(out)
    except CheckpointError:
        folder = None
    step = None
    if folder is not None:
        load(folder)  # weights, config and tokenizer all read and match
        state = json.loads((folder / "train_state.json").read_text())
        step = state["progress"]["step"]
        from coembed.checkpoint import read_tensors

        read_tensors(folder / "train_state.safetensors")
        assert not logged or step <= max(logged), f"checkpoint at step {step} but the log stops at {max(logged)}"
    return TrainingState(folder, step, logged, _phase(out, folder))


def _complete_metric_steps(path: Path) -> list[int]:
    if not path.exists():
        return []
    lines = path.read_text().split("\n")
    steps = []
    for i, line in enumerate(lines):
        if not line:
            continue
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            # only the last line may be torn (cut short by the kill, no newline after it)
            assert i == len(lines) - 1, f"{path}: line {i + 1} of {len(lines)} is not JSON: {line[:80]!r}"
    return steps


def _phase(out: Path, folder: Path | None) -> str:
    if (out / ".staging-checkpoint").exists():
        return "checkpoint write"
    if (out / "checkpoint.old").exists():
        return "checkpoint publish"
    return "no checkpoint yet" if folder is None else "between checkpoints"


def assert_same_runs(ref: Path, run: Path) -> None:
    """Same metrics (timings aside) and bit-identical weights and optimizer state."""
    from coembed.checkpoint import read_tensors
    from coembed.train.loop import TIMING_KEYS

    def metrics(folder: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in (folder / "metrics.jsonl").read_text().splitlines()]

    assert metrics(ref) == metrics(run)
    for name in ("model.safetensors", "train_state.safetensors"):
        want, got = (read_tensors(r / "checkpoint" / name) for r in (ref, run))
        assert want.keys() == got.keys(), name
        different = [k for k in want if not (want[k].shape == got[k].shape and (want[k] == got[k]).all())]
        assert not different, f"{name}: {different[:5]}"


# ---- script: many seeds for docs/reliability.md --------------------------------------------------


def _main() -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = _many_kills(Path(tmp), args.seeds, args.steps)
    print(json.dumps(report, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
    return 0 if report["training_mismatches"] == 0 and report["index_losses"] == 0 else 1


def _many_kills(tmp: Path, seeds: int, steps: int) -> dict:
    data = tmp / "shapes"
    run(coembed_cmd("data", "shapes", "--out", str(data), "--train", "256", "--val", "64", "--test", "64", "--heldout", "0"))
    train_args = training_args(data, steps)
    ref = tmp / "ref"
    duration = work_window(coembed_cmd(*train_args, "--out", str(ref)), metrics_started(ref), checkpoint_at(ref, steps))
    phases: dict[str, int] = {}
    mismatches = 0
    for seed in range(seeds):
        out = tmp / f"kill{seed}"
        killed = kill_after(coembed_cmd(*train_args, "--out", str(out)), random_delay(seed, 0.0, duration), metrics_started(out))
        state = inspect_training_run(out)
        phase = state.phase if killed.was_killed else "finished before the kill"
        phases[phase] = phases.get(phase, 0) + 1
        run(coembed_cmd(*train_args, "--out", str(out), "--resume", "auto"))
        try:
            assert_same_runs(ref, out)
        except AssertionError:
            mismatches += 1
    index = index_kills(tmp, data, ref / "checkpoint", seeds)
    return {"training_kills": seeds, "training_phases": phases, "training_mismatches": mismatches, **index}


# Tiny model as in tests/conftest.py; a checkpoint every step so that kills often land in a write.
TINY = ["vision.layers=1", "text.layers=1", "vision.width=64", "vision.heads=2", "text.width=64", "text.heads=2", "embed_dim=32"]


def training_args(data: Path, steps: int) -> list[str]:
    sets = [f"model.{s}" for s in TINY] + ["workers=0", "precision=fp32", "save_every=1", "log_every=1", "val_every=4",
                                           "lr=3e-3", "warmup_steps=2"]
    return ["train", "--data", str(data), "--preset", "tiny", "--batch-size", "32", "--max-steps", str(steps), "--no-progress",
            *[x for s in sets for x in ("--set", s)]]


def index_args(photos: Path, db: Path, checkpoint: Path) -> list[str]:
    return ["index", str(photos), "--db", str(db), "--checkpoint", str(checkpoint), "--batch-size", "4", "--no-progress"]


def committed_vectors(db: Path, root: Path) -> dict[str, tuple[int, "object"]]:
    """path -> (vector id, vector) of every live file the store at ``db`` holds under ``root``."""
    from coembed.search.store import Store

    if not db.exists():
        return {}
    with Store.open(db) as store:
        return {p: (row.vector_id, store.vector(row.vector_id)) for p in store.live_paths_under(str(root.resolve()))
                if (row := store.lookup(p)) is not None and row.vector_id is not None}


def check_index_resumed(db: Path, photos: Path, before: dict, reference: dict) -> None:
    """After the rerun: every image indexed once with the reference's vector; what was committed
    before the kill kept its vector id (nothing redone or lost)."""
    import numpy as np

    after = committed_vectors(db, photos)
    names = {Path(p).name: v for p, v in after.items()}
    ref_names = {Path(p).name: v for p, v in reference.items()}
    assert sorted(names) == sorted(ref_names), "the resumed index does not hold the same images"
    for name, (_, vector) in names.items():
        np.testing.assert_allclose(vector, ref_names[name][1], rtol=0, atol=1e-6, err_msg=name)
    for path, (vector_id, _) in before.items():
        assert after[path][0] == vector_id, f"{path} was re-embedded or lost after the kill"


def index_kills(tmp: Path, data: Path, checkpoint: Path, seeds: int, images: int = 48) -> dict:
    """Index ``images`` test images, killed at random moments; returns counts for the report."""
    import shutil

    photos = tmp / "photos"
    photos.mkdir(exist_ok=True)
    for src in sorted((data / "test" / "images").glob("*.png"))[:images]:
        shutil.copy(src, photos / src.name)
    ref_db = tmp / "ref.db"
    duration = work_window(coembed_cmd(*index_args(photos, ref_db, checkpoint)), file_exists(ref_db), store_holds(ref_db, images))
    reference = committed_vectors(ref_db, photos)
    committed_at_kill, losses = [], 0
    for seed in range(seeds):
        db = tmp / f"kill{seed}.db"
        kill_after(coembed_cmd(*index_args(photos, db, checkpoint)), random_delay(1000 + seed, 0.0, duration), file_exists(db))
        before = committed_vectors(db, photos)
        committed_at_kill.append(len(before))
        run(coembed_cmd(*index_args(photos, db, checkpoint)))
        try:
            check_index_resumed(db, photos, before, reference)
        except AssertionError:
            losses += 1
    return {"index_kills": seeds, "index_committed_at_kill": committed_at_kill, "index_losses": losses}


if __name__ == "__main__":
    sys.exit(_main())
