"""Training that streams WebDataset shards (``train_shards``): a run, its exact resume, a truncated
shard skipped and counted, and 2 processes over an uneven number of shards stopping together."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from coembed.data.shards import write_shards
from coembed.train.config import TrainConfig
from coembed.train.loop import TIMING_KEYS, train
from tests.helpers import assert_same_runs, free_port, interrupt_then_resume, torchrun_env

KW = {"max_steps": 10, "log_every": 1, "val_every": 5, "save_every": 4, "warmup_steps": 1, "batch_size": 32, "shard_shuffle": 16}


@pytest.fixture(scope="module")
def shard_dir(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``shapes_data`` as shards: train 256 samples in 4 shards of 64 (8 batches of 32 per epoch)."""
    out = tmp_path_factory.mktemp("shards")
    write_shards(shapes_data, out, 64)
    return out


def _cfg(shapes_data: Path, shards: Path, out: Path, settings: dict, **kw) -> TrainConfig:
    return TrainConfig(data=str(shapes_data), out=str(out), train_shards=str(shards), **{**settings, **KW, **kw})


def _lines(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shard_run(shapes_data: Path, shard_dir: Path, tiny_settings: dict, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("stream") / "run"
    return out, train(_cfg(shapes_data, shard_dir / "train", out, tiny_settings))


def test_a_run_streams_the_shards(shard_run) -> None:
    out, result = shard_run
    assert result.steps == 10 and result.samples_seen == 10 * 32 and result.skipped.total == 0
    assert "val_t2i_r1" in result.last_val  # the val split of `data` validates
    steps = [x for x in _lines(out) if "loss" in x]
    assert [x["epoch"] for x in steps] == [0] * 8 + [1] * 2  # 256 samples: 8 steps per epoch
    assert not any("stream_ended_steps_early" in x for x in _lines(out))


def test_an_interrupted_stream_resumes_exactly(shard_run, shapes_data: Path, shard_dir: Path, tiny_settings: dict, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ref, _ = shard_run
    cfg = _cfg(shapes_data, shard_dir / "train", tmp_path / "b", tiny_settings)
    interrupt_then_resume(cfg, 7, monkeypatch, "train_step")  # resumes from step 4: skips 4 batches of the stream
    assert_same_runs(ref, tmp_path / "b")


def test_a_truncated_shard_is_counted_and_the_run_goes_on(shapes_data: Path, shard_dir: Path, tiny_settings: dict, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(shard_dir / "train", shards)
    tar = shards / "00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    result = train(_cfg(shapes_data, shards, tmp_path / "run", tiny_settings))
    assert result.steps == 10
    assert any(reason.startswith("truncated shard") for reason in result.skipped.by_reason), result.skipped.by_reason
    assert any("stream_ended_steps_early" in x for x in _lines(tmp_path / "run"))  # half a shard fewer batches per epoch


def test_a_stream_ending_early_in_the_last_epoch_still_saves(shapes_data: Path, shard_dir: Path, tiny_settings: dict,
                                                              tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shutil.copytree(shard_dir / "train", shards)
    tar = shards / "00003.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # epoch 0 gives fewer than its 8 steps
    result = train(_cfg(shapes_data, shards, tmp_path / "run", tiny_settings, max_steps=8))
    assert result.steps == 8 and "val_t2i_r1" in result.last_val
    assert json.loads((tmp_path / "run" / "checkpoint" / "train_state.json").read_text())["progress"]["step"] == 8


def _rank_worker(rank: int, world: int, port: int, cfg: dict) -> None:
    torchrun_env(rank, world, port)
    train(TrainConfig(**cfg))


def test_two_ranks_over_uneven_shards_stop_together(shapes_data: Path, shard_dir: Path, tiny_settings: dict, tmp_path: Path) -> None:
    """3 shards on 2 ranks: one reads 128 samples, the other 64; the epoch ends when the second runs out."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("00000", "00001", "00002"):
        for suffix in (".tar", "_stats.json"):
            shutil.copy(shard_dir / "train" / f"{name}{suffix}", shards)
    cfg = _cfg(shapes_data, shards, tmp_path / "run", tiny_settings, max_steps=8, val_every=100)
    mp.spawn(_rank_worker, args=(2, free_port(), cfg.to_dict()), nprocs=2, join=True)
    lines = _lines(tmp_path / "run")
    steps = [x["step"] for x in lines if "loss" in x]
    assert steps == [1, 2, 3, 4, 7, 8]  # 6 steps per epoch of 192; each epoch's stream gives 4
    assert [x["stream_ended_steps_early"] for x in lines if "stream_ended_steps_early" in x] == [2]
    assert json.loads((tmp_path / "run" / "checkpoint" / "train_state.json").read_text())["progress"]["step"] == 8
