"""The trainer on the MAE family: a resumed run masks and updates exactly as an uninterrupted one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import coembed
from coembed.data.datasets import read_samples
from coembed.objectives.mae import validation_loss
from coembed.train.config import TrainConfig
from coembed.train.loop import train
from coembed.transforms import load_image
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


def test_mae_validation_is_the_masked_patch_loss_of_the_val_images(shapes_data: Path, tmp_path: Path) -> None:
    cfg = replace(_cfg(shapes_data, tmp_path / "run"), val_samples=16, val_every=2)
    result = train(cfg)
    vals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "val_mae" in x]
    assert [v["step"] for v in vals] == [2, 4] and result.last_val == {"val_mae": vals[-1]["val_mae"]}
    model, preprocess, _ = coembed.load(tmp_path / "run")
    samples, _ = read_samples(shapes_data / "val")
    images = torch.stack([preprocess(load_image(shapes_data / "val" / s.image)) for s in samples[:16]])
    assert vals[-1]["val_mae"] == pytest.approx(validation_loss(model, images), rel=1e-5)  # one batch of 16: the same masks
