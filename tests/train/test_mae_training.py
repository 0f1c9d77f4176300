"""The trainer on the MAE family: a resumed run masks and updates exactly as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from coembed.checkpoint import read_tensors
from coembed.train import loop as loop_mod
from coembed.train.config import TrainConfig
from coembed.train.loop import TIMING_KEYS, train

SMALL = {"vision.layers": 1, "vision.width": 32, "vision.heads": 2}


def _cfg(data: Path, out: Path) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), preset="mae-tiny", model=dict(SMALL), batch_size=32, max_steps=4,
                       log_every=1, save_every=2, val_samples=0, workers=0, precision="fp32", progress=False, warmup_steps=1)


def _lines(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_mae_resume_reproduces_the_uninterrupted_run(shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train(_cfg(shapes_data, tmp_path / "ref"))
    real = loop_mod.fusion_train_step

    def interrupted(*args, step: int, **kwargs):
        if step == 3:
            raise KeyboardInterrupt
        return real(*args, step=step, **kwargs)

    monkeypatch.setattr(loop_mod, "fusion_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(shapes_data, tmp_path / "b"))
    monkeypatch.setattr(loop_mod, "fusion_train_step", real)
    train(_cfg(shapes_data, tmp_path / "b"), resume=True)
    ref = _lines(tmp_path / "ref")
    assert [x["step"] for x in ref] == [1, 2, 3, 4] and _lines(tmp_path / "b") == ref
    want, got = (read_tensors(tmp_path / r / "checkpoint" / "model.safetensors") for r in ("ref", "b"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
