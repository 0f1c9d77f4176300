"""Small builders shared by the bridge tests (causal LM, Q-Former, Flamingo, LLaVA)."""

from __future__ import annotations

from pathlib import Path

import torch

# Tiny shapes: every bridge test model builds and runs in milliseconds on one thread.
TINY_VISION = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2}
TINY_LM = {"vocab_size": 64, "context_length": 40, "width": 32, "layers": 2, "heads": 2}


def gpt2_folder(root: Path, *, layers: int = 2, positions: int = 40, seed: int = 0) -> Path:
    """A random-weight GPT-2 LM head model saved by transformers' own ``save_pretrained``."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=64, n_positions=positions, n_embd=32, n_layer=layers, n_head=2,
                                     bos_token_id=1, eos_token_id=2, activation_function="gelu",
                                     resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)  # dropout on: a frozen LM must turn it off
    folder = root / "gpt2"
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(folder, safe_serialization=True)
    return folder


def tokens_with_padding(batch: int = 3, length: int = 9, vocab: int = 64, seed: int = 1) -> torch.Tensor:
    """``<sot> ...`` ids in [5, vocab), row 1 padded (id 0) from position 5: real padding inside the batch."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, vocab, (batch, length), generator=g)
    tokens[:, 0] = 1
    tokens[1, 5:] = 0
    return tokens


def images(batch: int = 3, size: int = 32, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# Bridge presets at test size on the 64 px `shapes` fixture: 16 patches of a 1-block ViT, a 2-block LM.
TRAIN_VISION = {"vision.patch_size": 16, "vision.width": 32, "vision.heads": 2, "vision.layers": 1}
TRAIN_LM = {"lm.width": 32, "lm.heads": 2, "lm.layers": 2, "lm.context_length": 72}


def train_settings(shapes_data: Path, out: Path, preset: str, model: dict, **extra) -> object:
    """A TrainConfig of ``preset`` at test size: batch 16, 4 steps, fp32, validation every 2 steps."""
    from coembed.train.config import TrainConfig

    settings = {"batch_size": 16, "max_steps": 4, "workers": 0, "precision": "fp32", "progress": False, "val_samples": 16,
                "val_every": 2, "save_every": 2, "lr": 1e-3, "warmup_steps": 1, **extra}
    return TrainConfig(data=str(shapes_data), out=str(out), preset=preset, model=model, **settings)


def check_trains_and_resumes_exactly(shapes_data: Path, tmp_path: Path, monkeypatch, preset: str, model: dict) -> dict:
    """Train ``preset`` 4 steps, and again interrupted at step 3 then resumed: same metrics and weights.
    Returns the last validation metrics."""
    from coembed.train.loop import train
    from tests.helpers import assert_same_runs, interrupt_then_resume

    ref = train(train_settings(shapes_data, tmp_path / "ref", preset, model))
    interrupt_then_resume(train_settings(shapes_data, tmp_path / "run", preset, model), 3, monkeypatch)
    assert_same_runs(tmp_path / "ref", tmp_path / "run")
    assert ref.steps == 4 and torch.isfinite(torch.tensor(ref.last_loss))
    return ref.last_val


def add_word_tokenizer(folder: Path, vocab_size: int = 64) -> None:
    """Give a Hugging Face folder a ``tokenizer.json``: a lower-cased word-level vocabulary of the commonest
    `shapes` caption words ([PAD] 0, [UNK] 1), small enough for the tiny GPT-2's 64 ids."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    words = ["a", "the", "small", "large", "big", "red", "green", "blue", "yellow", "purple", "orange", "white", "black",
             "circle", "square", "triangle", "star", "cross", "left", "right", "of", "above", "below", "and", "two", "three",
             "one", "is", "to", "next", "an", "with", "image", "photo", "picture", "there", "on", "in", "top", "bottom"]
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words[: vocab_size - 2])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]"}))
