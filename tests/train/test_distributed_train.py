"""Data-parallel training over 2 gloo CPU processes (as ``torchrun --nproc_per_node 2`` starts them)
equals one process on the combined batch: the step's loss and gradients, a whole run's losses and
weights, and a run interrupted on 2 processes and resumed on 1.

The patch stem throughout: the conv stem's BatchNorm normalises each rank's slice by its own
statistics, so it cannot equal the combined batch (as with any data parallelism without SyncBatchNorm).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from coembed.checkpoint import read_tensors
from coembed.presets import apply_overrides, get_preset, new_model
from coembed.train import loop as loop_mod
from coembed.train.config import TrainConfig
from coembed.train.distributed import DistEnv, from_env
from coembed.train.loop import TIMING_KEYS, train
from coembed.train.step import train_step
from tests.helpers import free_port, torchrun_env

BATCH = 7  # uneven slices: 3 and 4 pairs
STEP_CASES = {  # name -> (preset, train_step keyword arguments, model dtype)
    "clip": ("tiny", {"loss_name": "clip"}, torch.float32),
    "siglip": ("tiny-siglip", {"loss_name": "siglip"}, torch.float32),
    "clip_chunked": ("tiny", {"loss_name": "clip", "loss_chunk_size": 2}, torch.float32),
    "siglip_chunked": ("tiny-siglip", {"loss_name": "siglip", "loss_chunk_size": 2}, torch.float32),
    "clip_accum": ("tiny", {"loss_name": "clip", "accum_steps": 2}, torch.float32),
    # float64 towers (the loss itself runs in float32): summation order no longer shows at 1e-5
    "clip_float64": ("tiny", {"loss_name": "clip"}, torch.float64),
    "siglip_float64": ("tiny-siglip", {"loss_name": "siglip"}, torch.float64),
}
SMALL = {"vision.stem": "patch", "vision.width": 32, "vision.layers": 2, "vision.heads": 2, "text.width": 32, "text.layers": 2,
         "text.heads": 2, "embed_dim": 16}


def _spawn(worker, *args) -> None:
    mp.spawn(worker, args=(2, free_port(), *args), nprocs=2, join=True)


# ----------------------------------------------------------------------------- one step
def _step_inputs(preset: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    model = new_model(apply_overrides(get_preset(preset), SMALL)).to(dtype)
    g = torch.Generator().manual_seed(1)
    size = model.cfg.vision.image_size
    images = torch.randn(BATCH, 3, size, size, generator=g, dtype=torch.float64).to(dtype)
    tokens = torch.randint(8, model.cfg.text.vocab_size, (BATCH, 12), generator=g)  # no padding: ids past the specials
    return model, images, tokens


def _one_step(model, images, tokens, kwargs, env: DistEnv | None):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    result = train_step(model, optimizer, images, tokens, bf16=False, grad_clip=None, step=1, env=env, **kwargs)
    return result.loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _regression_losses(model, batch, *, progress, weights, generator):
    """A stand-in fusion objective: mean squared error of a linear map, a mean over the local pairs."""
    return {"mse": ((model(batch.images) - batch.tokens.float()) ** 2).mean()}


def _fusion_inputs():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    return torch.nn.Linear(5, 3), torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)


def _fusion_step(model, x, y, env):
    from coembed.objectives import FusionBatch
    from coembed.train.fusion_step import fusion_train_step

    batch = FusionBatch(x, y, torch.arange(len(x)))
    result = fusion_train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, compute_losses=_regression_losses, weights={},
                               progress=0.0, seed=0, step=1, bf16=False, grad_clip=None, env=env)
    return result.loss, {n: p.grad.clone() for n, p in model.named_parameters()}


def _step_worker(rank: int, world: int, port: int, out: str) -> None:
    torchrun_env(rank, world, port)
    env = from_env("cpu")
    results = {}
    for name, (preset, kwargs, dtype) in STEP_CASES.items():
        model, images, tokens = _step_inputs(preset, dtype)
        rows = env.local_slice(list(range(BATCH)))
        loss, grads = _one_step(model, images[rows], tokens[rows], kwargs, env)
        results[name] = {"loss": torch.tensor(loss), **grads}
    model, x, y = _fusion_inputs()
    rows = env.local_slice(list(range(len(x))))
    loss, grads = _fusion_step(model, x[rows], y[rows], env)
    results["fusion"] = {"loss": torch.tensor(loss), **grads}
    torch.save(results, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def step_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Each rank's step results (one spawn for all cases)."""
    out = tmp_path_factory.mktemp("steps")
    _spawn(_step_worker, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_step_loss_and_gradients_equal_the_combined_batch(step_results) -> None:
    ranks = step_results
    for name, (preset, kwargs, dtype) in STEP_CASES.items():
        model, images, tokens = _step_inputs(preset, dtype)
        loss, grads = _one_step(model, images, tokens, kwargs, None)
        for r in ranks:
            assert float(r[name]["loss"]) == pytest.approx(loss, abs=1e-5), name
            assert set(r[name]) - {"loss"} == set(grads), name
            for k, g in grads.items():
                # float32 towers sum in another order: 1e-5 of the tensor's largest entry; float64: 1e-5 absolute
                atol = 1e-5 if dtype == torch.float64 else 1e-5 * max(1.0, g.abs().max().item())
                torch.testing.assert_close(r[name][k], g, rtol=0, atol=atol, msg=f"{name}: {k}")


def test_fusion_step_averages_rank_gradients(step_results) -> None:
    """Rank-local objectives (equal slices): the averaged gradient is the combined batch's, as DDP."""
    model, x, y = _fusion_inputs()
    loss, grads = _fusion_step(model, x, y, None)
    for r in range(2):
        got = step_results[r]["fusion"]
        assert float(got["loss"]) == pytest.approx(loss, abs=1e-6)
        for k, g in grads.items():
            torch.testing.assert_close(got[k], g, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- whole runs
RUN_KW = {"max_steps": 4, "log_every": 1, "val_every": 2, "save_every": 2, "warmup_steps": 1, "lr": 2e-3}


def _cfg(data: Path, out: Path, settings: dict) -> TrainConfig:
    settings = {**settings, "model": {**settings["model"], "vision.stem": "patch"}}
    return TrainConfig(data=str(data), out=str(out), **{**settings, **RUN_KW})


def _run_worker(rank: int, world: int, port: int, cfg: dict, interrupt_at: int) -> None:
    torchrun_env(rank, world, port)
    real_step = loop_mod.train_step

    def step(*args, step: int, **kwargs):
        if step == interrupt_at:
            raise KeyboardInterrupt  # on every rank at the same step, as a job stopped by its scheduler
        return real_step(*args, step=step, **kwargs)

    loop_mod.train_step = step
    try:
        train(TrainConfig(**cfg))
    except KeyboardInterrupt:
        pass


def _lines(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(got: Path, want: Path) -> None:
    a, b = _lines(got), _lines(want)
    assert [x["step"] for x in a] == [x["step"] for x in b]  # each step logged once: by rank 0 only
    for x, y in zip(a, b):
        for key in ("loss", "val_loss", "val_t2i_r1", "samples_seen"):
            if key in y:
                assert x[key] == pytest.approx(y[key], abs=1e-4), (key, y["step"])
    want_w = read_tensors(want / "checkpoint" / "model.safetensors")
    got_w = read_tensors(got / "checkpoint" / "model.safetensors")
    assert want_w.keys() == got_w.keys()
    for k in want_w:
        torch.testing.assert_close(got_w[k], want_w[k], rtol=1e-3, atol=1e-4, msg=k)


@pytest.fixture(scope="module")
def single_run(shapes_data: Path, tiny_settings: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    train(_cfg(shapes_data, out, tiny_settings))
    return out


def test_two_process_run_equals_one_process(single_run: Path, shapes_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    cfg = _cfg(shapes_data, tmp_path / "ddp", tiny_settings)
    _spawn(_run_worker, cfg.to_dict(), 0)
    _assert_same_run(tmp_path / "ddp", single_run)
    state = json.loads((tmp_path / "ddp" / "checkpoint" / "train_state.json").read_text())
    assert state["progress"]["step"] == 4 and state["progress"]["samples_seen"] == 4 * cfg.batch_size


def test_interrupted_two_process_run_resumes_on_one(single_run: Path, shapes_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    """Rank 0's checkpoint holds the whole job's state: the world size may change on resume."""
    cfg = _cfg(shapes_data, tmp_path / "b", tiny_settings)
    _spawn(_run_worker, cfg.to_dict(), 4)
    assert json.loads((tmp_path / "b" / "checkpoint" / "train_state.json").read_text())["progress"]["step"] == 2
    train(cfg, resume=True)
    _assert_same_run(tmp_path / "b", single_run)


def test_global_batch_must_cover_the_ranks(shapes_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    from coembed.errors import ConfigError
    from coembed.train.loop import _check_distributed

    env = DistEnv(rank=0, world_size=4)
    with pytest.raises(ConfigError, match=r"batch_size 6 is the global batch.*4 ranks"):
        _check_distributed(TrainConfig(data="d", out="o", batch_size=6), env)
    with pytest.raises(ConfigError, match="hard_negatives"):
        _check_distributed(TrainConfig(data="d", out="o", hard_negatives=True), env)
    _check_distributed(TrainConfig(data="d", out="o", batch_size=8), env)


def test_local_slices_partition_the_batch() -> None:
    batch = list(range(10))
    parts = [DistEnv(rank=r, world_size=3).local_slice(batch) for r in range(3)]
    assert sum(parts, []) == batch and [len(p) for p in parts] == [3, 3, 4]
    assert [DistEnv(rank=r, world_size=3).local_size(10) for r in range(3)] == [3, 3, 4]


def test_from_env_reads_torchrun_variables() -> None:
    assert from_env("cpu", environ={}) == DistEnv()
    env = from_env("cpu", environ={"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert (env.rank, env.world_size, env.enabled) == (0, 1, False)
    from coembed.errors import ConfigError

    with pytest.raises(ConfigError, match="RANK 3 is outside"):
        from_env("cpu", environ={"RANK": "3", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(ConfigError, match="must be integers"):
        from_env("cpu", environ={"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
