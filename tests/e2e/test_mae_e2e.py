"""``coembed train --preset mae-tiny`` pre-trains the image tower and saves an MAE checkpoint; a dual
encoder run with ``init_from`` it and ``init_prefixes: ["visual."]`` starts from its image tower."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import coembed
from coembed.checkpoint import read_tensors
from coembed.cli.main import main
from coembed.models.mae import MAE
from coembed.train import loop as loop_mod

SMALL = ["model.vision.layers=1", "model.vision.width=64", "model.vision.heads=2", "workers=0", "precision=fp32"]


def train(*args: str) -> None:
    assert main(["train", "--batch-size", "32", "--no-progress", *args]) == 0


def test_mae_pretraining_then_warm_started_dual_encoder(shapes_data: Path, tiny_sets: list[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    mae_run, clip_run = tmp_path / "mae", tmp_path / "clip"
    train("--data", str(shapes_data), "--out", str(mae_run), "--preset", "mae-tiny", "--max-steps", "2",
          *[x for s in [*SMALL, "log_every=1", "warmup_steps=1", "val_samples=0"] for x in ("--set", s)])
    lines = [json.loads(x) for x in (mae_run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(x["loss"] == x["loss_mae"] > 0 for x in lines)
    model, preprocess, _ = coembed.load(mae_run)
    assert isinstance(model, MAE) and preprocess.image_size == 64
    saved = read_tensors(mae_run / "checkpoint" / "model.safetensors")

    started = {}
    real = loop_mod.warm_start

    def spy(model, path, prefixes):
        report = real(model, path, prefixes)
        started.update(report=report, state={k: v.clone() for k, v in model.state_dict().items()})
        return report

    monkeypatch.setattr(loop_mod, "warm_start", spy)
    clip_sets = [*tiny_sets, "model.vision.stem=patch", f"init_from={mae_run}", "init_prefixes=visual.", "val_samples=0"]
    train("--data", str(shapes_data), "--out", str(clip_run), "--preset", "tiny", "--max-steps", "1",
          *[x for s in clip_sets for x in ("--set", s)])
    visual = {k for k in saved if k.startswith("visual.")}
    assert set(started["report"].copied) == visual
    for key in ("visual.conv1.weight", "visual.positional_embedding", "visual.transformer.resblocks.0.mlp.c_fc.weight"):
        assert torch.equal(started["state"][key], saved[key]), key
    assert not torch.equal(started["state"]["visual.conv1.weight"], read_tensors(clip_run / "checkpoint" / "model.safetensors")["visual.conv1.weight"])
