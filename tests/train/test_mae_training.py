"""The trainer on the MAE family: a resumed run masks and updates exactly as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coembed.train.config import TrainConfig
from coembed.train.loop import train
from tests.helpers import assert_same_runs, interrupt_then_resume

SMALL = {"vision.layers": 1, "vision.width": 32, "vision.heads": 2}


def _cfg(data: Path, out: Path) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), preset="mae-tiny", model=dict(SMALL), batch_size=32, max_steps=4,
                       log_every=1, save_every=2, val_samples=0, workers=0, precision="fp32", progress=False, warmup_steps=1)


def test_mae_resume_reproduces_the_uninterrupted_run(shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train(_cfg(shapes_data, tmp_path / "ref"))
    interrupt_then_resume(_cfg(shapes_data, tmp_path / "b"), 3, monkeypatch)
    steps = [json.loads(x)["step"] for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert_same_runs(tmp_path / "ref", tmp_path / "b")
