"""What each scaling flag of coembed's trainer costs in memory and time, next to OpenCLIP's where it has
the same feature.

Every configuration (model, batch, flag) runs in a fresh process with one thread: the model (seed 0,
patch stem, so accumulation and data parallelism are exact), AdamW, and one global batch of random
64 px images and random captions (8 to 20 tokens, ``<sot> ... <eot>`` padded to the context of 48;
coembed's text tower trims the padding, OpenCLIP runs all 48 positions). A first step allocates the
optimizer state and gives the loss (the weights are the same for every flag, so the losses must
agree); then the peak RSS is reset (benchmarks/peak_rss.py) and a second step is timed and its peak
read: **peak MiB above the state after model, optimizer (with its state) and inputs are built**.
glibc's dynamic mmap threshold is pinned (``MALLOC_MMAP_THRESHOLD_``) so that the first step's freed
tensors go back to the OS instead of staying resident and hiding the second step's peak.

coembed flags (``coembed.train.step.train_step``): ``accum_steps`` (feature-cache accumulation),
``loss_chunk_size`` (the chunked CLIP loss), ``vision.patch_dropout`` (FLIP) and 2 ranks (2 gloo
processes from ``torch.multiprocessing.spawn``, each with half the global batch, the global loss;
the larger of the two ranks' peaks is reported). OpenCLIP (``open_clip_train.train.train_one_epoch``
itself, on a loader of ``accum_freq`` micro-batches = one optimizer step, ``ClipLoss``, fp32, clip
1.0) on the same weights: the coembed model written in OpenCLIP's layout
(``coembed.interop.openclip.write``) and loaded with ``open_clip.create_model("local-dir:...")``;
its patch dropout through ``force_patch_dropout``.

    PYTHONPATH=. .venv-test/bin/python benchmarks/scaling_memory.py \
        --json runs/scaling_memory.json --plot docs/img/scaling_memory.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: coembed, tests.helpers
from peak_rss import peak_mib, reset_peak, rss_mib  # noqa: E402

CONTEXT = 48
MODELS = {  # name -> overrides of preset `tiny` (always with the patch stem)
    "tiny": {},
    "vit256x6": {"vision.width": 256, "vision.layers": 6, "vision.heads": 4},
}
# flag -> (implementation, settings); settings: accum (micro-batches), chunk (loss_chunk_size),
# patch_dropout, ranks
FLAGS = {
    "baseline": ("coembed", {}),
    "accum 2": ("coembed", {"accum": 2}),
    "accum 4": ("coembed", {"accum": 4}),
    "accum 8": ("coembed", {"accum": 8}),
    "chunk 64": ("coembed", {"chunk": 64}),
    "chunk 64 + accum 4": ("coembed", {"chunk": 64, "accum": 4}),
    "patch dropout 0.5": ("coembed", {"patch_dropout": 0.5}),
    "2 ranks": ("coembed", {"ranks": 2}),
    "OpenCLIP baseline": ("openclip", {}),
    "OpenCLIP accum_freq 4": ("openclip", {"accum": 4}),
    "OpenCLIP patch dropout 0.5": ("openclip", {"patch_dropout": 0.5}),
}
MMAP_THRESHOLD = str(1 << 20)  # bytes: larger allocations always mmap, and go back to the OS when freed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=["tiny:256", "tiny:1024", "vit256x6:512"],
                   help="MODEL:BATCH pairs; models: " + ", ".join(MODELS))
    p.add_argument("--flags", nargs="+", default=list(FLAGS), choices=list(FLAGS))
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--worker", help=argparse.SUPPRESS)  # one configuration, as JSON (internal)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- one configuration
def coembed_model(model: str, patch_dropout: float = 0.0):
    from coembed.presets import apply_overrides, get_preset, new_model

    torch.manual_seed(0)
    overrides = {**MODELS[model], "vision.stem": "patch", "vision.patch_dropout": patch_dropout}
    return new_model(apply_overrides(get_preset("tiny"), overrides))


def inputs(batch: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 64 px images, and ``<sot> ids <eot>`` captions of 8 to 20 tokens padded to the context."""
    g = torch.Generator().manual_seed(batch)
    images = torch.randn(batch, 3, 64, 64, generator=g)
    tokens = torch.zeros(batch, CONTEXT, dtype=torch.long)
    lengths = torch.randint(8, 21, (batch,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        tokens[i, 0] = 1
        tokens[i, 1 : n - 1] = torch.randint(8, vocab, (n - 2,), generator=g)
        tokens[i, n - 1] = 2
    return images, tokens


def measure(step) -> dict:
    """Run ``step(1)`` (optimizer state, loss), then ``step(2)`` with its own peak and time."""
    loss = step(1)
    base = rss_mib()
    exact = reset_peak()
    start = time.perf_counter()
    step(2)
    seconds = time.perf_counter() - start
    return {"loss": loss, "base_mib": base, "extra_mib": peak_mib() - base, "seconds": seconds, "peak_reset": exact}


def coembed_run(cfg: dict, env=None) -> dict:
    from coembed.train.optim import build_optimizer
    from coembed.train.step import train_step

    s = cfg["settings"]
    model = coembed_model(cfg["model"], s.get("patch_dropout", 0.0))
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    images, tokens = inputs(cfg["batch"], model.cfg.text.vocab_size)
    if env is not None:
        rows = env.local_slice(list(range(cfg["batch"])))
        images, tokens = images[rows].clone(), tokens[rows].clone()

    def step(n: int) -> float:
        return train_step(model, optimizer, images, tokens, loss_name="clip", bf16=False, grad_clip=1.0, step=n,
                          loss_chunk_size=s.get("chunk", 0), accum_steps=s.get("accum", 1), env=env).loss

    return {"params": sum(p.numel() for p in model.parameters()), **measure(step)}


def _rank_worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    from coembed.train.distributed import from_env
    from tests.helpers import torchrun_env

    torchrun_env(rank, world, port)  # RANK, WORLD_SIZE, ... as torchrun sets them; one thread
    env = from_env("cpu")
    result = coembed_run(cfg, env)
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def ranks_run(cfg: dict) -> dict:
    import torch.multiprocessing as mp

    from tests.helpers import free_port

    ranks = cfg["settings"]["ranks"]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank_worker, args=(ranks, free_port(), cfg, tmp), nprocs=ranks, join=True)
        results = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(ranks)]
    return {**results[0], "extra_mib": max(r["extra_mib"] for r in results), "seconds": max(r["seconds"] for r in results),
            "per_rank_extra_mib": [r["extra_mib"] for r in results]}


def openclip_run(cfg: dict) -> dict:
    import open_clip
    from open_clip.loss import ClipLoss
    from open_clip_train.train import train_one_epoch

    from coembed.interop.openclip import write
    from coembed.loading import default_preprocess
    from coembed.train.optim import build_optimizer

    s = cfg["settings"]
    ours = coembed_model(cfg["model"])
    with tempfile.TemporaryDirectory() as tmp:
        write(tmp, ours, default_preprocess(ours))
        model = open_clip.create_model(f"local-dir:{tmp}", output_dict=True, force_patch_dropout=s.get("patch_dropout") or None)
    vocab = ours.cfg.text.vocab_size
    del ours
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    images, tokens = inputs(cfg["batch"], vocab)
    accum = s.get("accum", 1)
    micro = list(zip(images.chunk(accum), tokens.chunk(accum)))
    data = {"train": SimpleNamespace(set_epoch=lambda epoch: None, dataloader=_Loader(micro, cfg["batch"]))}
    args = SimpleNamespace(device="cpu", precision="fp32", distill=False, accum_freq=accum, skip_scheduler=True, horovod=False,
                           grad_clip_norm=1.0, batch_size=cfg["batch"] // accum, world_size=1, rank=0, local_rank=0,
                           log_every_n_steps=1, wandb=False)
    clip_loss = ClipLoss()
    losses: list[float] = []

    def loss(**kw):
        out = clip_loss(**kw)
        losses.append(out["contrastive_loss"].item())
        return out

    def step(n: int) -> float:
        losses.clear()
        train_one_epoch(model, data, loss, n - 1, optimizer, None, None, None, args)
        return losses[0]  # with accum_freq, every micro-batch's loss is the whole batch's

    return {"params": sum(p.numel() for p in model.parameters()), **measure(step)}


class _Loader:
    """The parts of OpenCLIP's DataInfo.dataloader that train_one_epoch reads: one optimizer step."""

    def __init__(self, micro: list, batch: int):
        self.micro, self.num_batches, self.num_samples = micro, len(micro), batch

    def __iter__(self):
        return iter(self.micro)


def worker(cfg: dict) -> dict:
    torch.set_num_threads(1)
    logging.disable(logging.INFO)  # OpenCLIP's per-step log line
    if cfg["impl"] == "openclip":
        return openclip_run(cfg)
    return ranks_run(cfg) if cfg["settings"].get("ranks", 1) > 1 else coembed_run(cfg)


def run(model: str, batch: int, flag: str) -> dict:
    impl, settings = FLAGS[flag]
    cfg = {"model": model, "batch": batch, "flag": flag, "impl": impl, "settings": settings}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {**cfg, "error": (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]}
    return {**cfg, **json.loads(proc.stdout.strip().splitlines()[-1])}


# ----------------------------------------------------------------------------- report
def add_comparisons(rows: list[dict]) -> None:
    """Per row: loss difference and memory / time ratios against coembed's baseline of its (model, batch)."""
    base = {(r["model"], r["batch"]): r for r in rows if r["flag"] == "baseline" and "error" not in r}
    for r in rows:
        b = base.get((r["model"], r["batch"]))
        if b is None or "error" in r:
            continue
        r["loss_diff_vs_baseline"] = abs(r["loss"] - b["loss"])
        r["memory_vs_baseline"] = r["extra_mib"] / b["extra_mib"]
        r["time_vs_baseline"] = r["seconds"] / b["seconds"]


def table(rows: list[dict]) -> str:
    lines = ["| model | batch | flag | peak MiB above state | x baseline | step s | x baseline | loss | loss diff vs baseline |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['flag']} | failed: {r['error']} | | | | | |")
            continue
        diff = "n/a (other model)" if "patch dropout" in r["flag"] else f"{r['loss_diff_vs_baseline']:.1e}"
        lines.append(f"| {r['model']} | {r['batch']} | {r['flag']} | {r['extra_mib']:.0f} | {r['memory_vs_baseline']:.2f} | "
                     f"{r['seconds']:.2f} | {r['time_vs_baseline']:.2f} | {r['loss']:.5f} | {diff} |")
    return "\n".join(lines)


def max_loss_diff(rows: list[dict], impl: str | None = None) -> float:
    return max((r["loss_diff_vs_baseline"] for r in rows if "loss_diff_vs_baseline" in r and "patch dropout" not in r["flag"]
                and (impl is None or r["impl"] == impl)), default=float("nan"))


def plot(rows: list[dict], path: Path) -> None:
    from coembed.viz import new_figure, save_png

    groups = list(dict.fromkeys((r["model"], r["batch"]) for r in rows))
    fig = new_figure(5.2 * len(groups), 5.0, dpi=100)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (model, batch) in zip(axes, groups):
        part = [r for r in rows if (r["model"], r["batch"]) == (model, batch) and "error" not in r]
        colors = ["dimgray" if r["impl"] == "openclip" else "tab:orange" if r["flag"] == "baseline" else "tab:blue" for r in part]
        ax.barh(range(len(part)), [r["extra_mib"] for r in part], color=colors)
        ax.set_yticks(range(len(part)), [r["flag"] for r in part], fontsize=8)
        ax.invert_yaxis()
        for i, r in enumerate(part):
            ax.text(r["extra_mib"], i, f" {r['extra_mib']:.0f}", va="center", fontsize=7)
        ax.set(xlabel="peak MiB above model + optimizer + inputs", title=f"{model}, batch {batch}")
        ax.set_xlim(0, 1.18 * max(r["extra_mib"] for r in part))
    fig.suptitle("One training step's peak memory per scaling flag (fp32, 1 thread; OpenCLIP in gray)")
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    rows = []
    for spec in args.runs:
        model, batch = spec.split(":")
        for flag in args.flags:
            r = run(model, int(batch), flag)
            rows.append(r)
            shown = r.get("error") or f"{r['extra_mib']:.0f} MiB, {r['seconds']:.2f} s, loss {r['loss']:.6f}"
            print(f"{model}, batch {batch}, {flag}: {shown}", flush=True)
    add_comparisons(rows)
    print(table(rows))
    print(f"max |loss - baseline loss| over accumulation / chunking / ranks: {max_loss_diff(rows, 'coembed'):.1e}; "
          f"OpenCLIP rows vs coembed baseline: {max_loss_diff(rows, 'openclip'):.1e}")
    if args.json:
        from coembed.io import atomic_write_json

        atomic_write_json(args.json, {"setup": {"torch": torch.__version__, "threads": 1, "context": CONTEXT, "models": MODELS,
                                                "malloc_mmap_threshold": MMAP_THRESHOLD}, "rows": rows})
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
