"""`coembed train --preset albef-minilm` end to end on a stand-in BERT folder: the run uses the folder's
WordPiece tokenizer and weights, keeps the encoder frozen, and its checkpoint loads and scores pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import coembed
from coembed.errors import ConfigError
from coembed.interop.hf_tokenizer import HFTokenizer
from coembed.towers.bert import read_bert_state
from coembed.train.config import TrainConfig
from coembed.train.loop import train

SMALL = {"model": {"vision.width": 32, "vision.layers": 1, "vision.heads": 2, "text.width": 32, "text.fusion_layers": 1,
                   "queue_size": 16}}


def settings(data: Path, out: Path, folder: Path, **kw) -> TrainConfig:
    model = {**SMALL["model"], "text.path": str(folder), **kw.pop("model", {})}
    return TrainConfig(data=str(data), out=str(out), preset="albef-minilm", model=model, batch_size=8, max_steps=3,
                       warmup_steps=1, workers=0, precision="fp32", progress=False, val_every=3, val_samples=16, **kw)


def test_trains_with_the_folders_tokenizer_and_frozen_weights(shapes_data: Path, tmp_path: Path, tiny_bert_folder: Path) -> None:
    result = train(settings(shapes_data, tmp_path / "run", tiny_bert_folder))
    model, _, tokenizer = coembed.load(result.checkpoint)
    assert isinstance(tokenizer, HFTokenizer)
    saved = load_file(str(Path(result.checkpoint) / "model.safetensors"))
    for key, value in read_bert_state(tiny_bert_folder).items():
        if not key.startswith("pooler."):
            torch.testing.assert_close(saved[f"text.transformer.{key}"], value, atol=0, rtol=0)
    with torch.no_grad():
        logits = model.itm_logits(torch.randn(2, 3, 64, 64), tokenizer(["a red circle", "a blue star"], context_length=64))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_a_mask_id_that_is_not_the_tokenizers_is_refused(shapes_data: Path, tmp_path: Path, tiny_bert_folder: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[MASK\]"):
        train(settings(shapes_data, tmp_path / "run", tiny_bert_folder, model={"text.mask_id": 5}))
