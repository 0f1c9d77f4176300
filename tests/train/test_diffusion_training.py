"""The trainer on the diffusion family: resume is bit-identical, validation is the deterministic
denoising loss of the val pairs, and a run conditioned on a dual encoder's text tower keeps it frozen."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import coembed
from coembed.data.datasets import read_samples
from coembed.objectives.diffusion import validation_loss
from coembed.train.config import TrainConfig
from coembed.train.loop import train
from coembed.transforms import load_image
from tests.helpers import assert_same_runs, interrupt_then_resume

SMALL = {"image_size": 16, "patch_size": 1, "channels": [8, 16], "groups": 4, "heads": 2, "text.layers": 1, "text.width": 32,
         "text.heads": 2, "text_embed_dim": 16}


def _cfg(data: Path, out: Path, **extra) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), preset="diffusion-tiny", model={**SMALL, **extra}, batch_size=16, max_steps=4,
                       log_every=1, save_every=2, val_samples=0, workers=0, precision="fp32", progress=False, warmup_steps=1)


def test_diffusion_resume_reproduces_the_uninterrupted_run(shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train(_cfg(shapes_data, tmp_path / "ref"))
    interrupt_then_resume(_cfg(shapes_data, tmp_path / "b"), 3, monkeypatch)
    lines = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all("loss_denoise" in x for x in lines)
    assert_same_runs(tmp_path / "ref", tmp_path / "b")


def test_diffusion_validation_is_the_fixed_noise_denoising_loss(shapes_data: Path, tmp_path: Path) -> None:
    result = train(replace(_cfg(shapes_data, tmp_path / "run"), val_samples=16, val_every=2))
    vals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "val_denoise" in x]
    assert [v["step"] for v in vals] == [2, 4] and result.last_val == {"val_denoise": vals[-1]["val_denoise"]}
    model, preprocess, tokenizer = coembed.load(tmp_path / "run")
    samples, _ = read_samples(shapes_data / "val")
    images = torch.stack([preprocess(load_image(shapes_data / "val" / s.image)) for s in samples[:16]])
    tokens = tokenizer([s.captions[0] for s in samples[:16]], context_length=model.cfg.text.context_length)
    assert vals[-1]["val_denoise"] == pytest.approx(validation_loss(model, images, tokens), rel=1e-5)
    assert validation_loss(model, images, tokens) == validation_loss(model, images, tokens)  # fixed timesteps and noise


def test_text_path_run_uses_the_dual_encoders_tokenizer_and_keeps_its_tower(shapes_data: Path, tmp_path: Path,
                                                                             tiny_checkpoint: Path) -> None:
    model = {k: v for k, v in SMALL.items() if not k.startswith("text")}
    cfg = replace(_cfg(shapes_data, tmp_path / "run"), model={**model, "text_path": str(tiny_checkpoint)}, max_steps=2)
    train(cfg)
    run, dual = coembed.load(tmp_path / "run"), coembed.load(tiny_checkpoint)
    assert run.tokenizer.encode("a big red star") == dual.tokenizer.encode("a big red star")
    state = run.model.text.state_dict()
    for name, tensor in dual.model.state_dict().items():
        if not name.startswith("visual.") and name != "logit_scale":
            torch.testing.assert_close(state[name], tensor, msg=name)  # frozen: unchanged by training
