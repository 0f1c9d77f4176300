"""The trainer on the captioning families (CoCa, BLIP): `coembed train --preset coca-tiny / blip-tiny`
runs, validates with the captioning loss, weights CoCa's caption term 2 by default, and a resumed run
reproduces the uninterrupted one exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import coembed
from coembed.data.datasets import read_samples
from coembed.generation import caption
from coembed.losses.captioning import caption_loss
from coembed.train.config import TrainConfig
from coembed.train.loop import train
from coembed.transforms import load_image
from tests.helpers import assert_same_runs, interrupt_then_resume

SMALL = {
    "coca-tiny": {"vision.layers": 1, "vision.width": 32, "vision.heads": 2, "vision.stem": "patch", "embed_dim": 32,
                  "text.width": 32, "text.layers": 1, "text.decoder_layers": 1, "caption_queries": 4},
    "blip-tiny": {"vision.layers": 1, "vision.width": 32, "vision.heads": 2, "vision.stem": "patch", "text.width": 32,
                  "text.layers": 1},
}


def _cfg(data: Path, out: Path, preset: str, **kw) -> TrainConfig:
    settings = {"batch_size": 16, "max_steps": 4, "log_every": 1, "save_every": 2, "val_samples": 0, "workers": 0,
                "precision": "fp32", "progress": False, "warmup_steps": 1, "vocab_size": 300, **kw}
    return TrainConfig(data=str(data), out=str(out), preset=preset, model=dict(SMALL[preset]), **settings)


def _lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", ["coca-tiny", "blip-tiny"])
def test_resume_reproduces_the_uninterrupted_run(shapes_data: Path, tmp_path: Path, preset: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    train(_cfg(shapes_data, tmp_path / "ref", preset))
    interrupt_then_resume(_cfg(shapes_data, tmp_path / "b", preset), 3, monkeypatch)
    assert [x["step"] for x in _lines(tmp_path / "ref")] == [1, 2, 3, 4]
    assert_same_runs(tmp_path / "ref", tmp_path / "b")


def test_coca_weights_the_caption_term_two_unless_told_otherwise(shapes_data: Path, tmp_path: Path) -> None:
    train(_cfg(shapes_data, tmp_path / "default", "coca-tiny", max_steps=1))
    train(_cfg(shapes_data, tmp_path / "one", "coca-tiny", max_steps=1, loss_weights={"caption": 1.0}))
    for run, weight in (("default", 2.0), ("one", 1.0)):
        line = _lines(tmp_path / run)[0]
        assert line["loss"] == pytest.approx(line["loss_contrastive"] + weight * line["loss_caption"], rel=1e-6)


def test_validation_reports_the_caption_loss_and_coca_the_retrieval_metrics(shapes_data: Path, tmp_path: Path) -> None:
    for preset in ("coca-tiny", "blip-tiny"):
        result = train(_cfg(shapes_data, tmp_path / preset, preset, max_steps=2, val_samples=16, val_every=2))
        assert "val_caption_loss" in result.last_val
        assert ("val_t2i_r1" in result.last_val) == (preset == "coca-tiny")
    model, preprocess, tokenizer = coembed.load(tmp_path / "blip-tiny")
    samples, _ = read_samples(shapes_data / "val")
    images = torch.stack([preprocess(load_image(shapes_data / "val" / s.image)) for s in samples[:16]])
    tokens = tokenizer([s.captions[0] for s in samples[:16]], context_length=48)
    with torch.no_grad():  # one batch: the split's loss is this batch's plain (unsmoothed) caption loss
        want = caption_loss(model(images, tokens), tokens, tokenizer.pad_id).item()
    assert result.last_val["val_caption_loss"] == pytest.approx(want, rel=1e-5)
    assert model.cfg.text.sot_id == tokenizer.sot_id and len(caption(model, images[:2], tokenizer, max_length=8)) == 2
