"""``coembed train`` on the ViLT and VLMo presets (shrunk): terms logged, the tokenizer's ids reach
the flat configs, the checkpoint loads and scores pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import coembed
from coembed.train.config import TrainConfig
from coembed.train.loop import train

SMALL = {"layers": 1, "width": 32, "heads": 2}


@pytest.mark.parametrize("preset,terms", [("vilt-tiny", {"loss_itm", "loss_mlm"}), ("vlmo-tiny", {"loss_itc", "loss_itm", "loss_mlm"})])
def test_trains_and_loads(preset: str, terms: set[str], shapes_data: Path, tmp_path: Path) -> None:
    model = {**SMALL, **({"vl_layers": 1, "embed_dim": 16} if preset == "vlmo-tiny" else {})}
    cfg = TrainConfig(data=str(shapes_data), out=str(tmp_path / "run"), preset=preset, model=model, batch_size=16, max_steps=2,
                      log_every=1, val_every=2, save_every=2, val_samples=16, workers=0, precision="fp32", progress=False,
                      hard_negatives=True, vocab_size=300, warmup_steps=1)
    result = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert len(steps) == 2 and all(terms <= x.keys() for x in steps)
    assert any("val_itm_pair_acc" in x for x in lines)
    loaded, preprocess, tokenizer = coembed.load(result.checkpoint)
    assert loaded.cfg.vocab_size == tokenizer.vocab_size and loaded.cfg.pad_id == tokenizer.pad_id
    images = torch.zeros(2, 3, preprocess.image_size, preprocess.image_size)
    assert loaded.itm_logits(images, tokenizer(["a red circle", "a blue star"], context_length=48)).shape == (2, 2)
