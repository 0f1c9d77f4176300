"""tokenizer_from: fine-tuning on another dataset with init_from keeps the source run's token ids and
loads every weight; without it the new BPE's ids differ (and a warning says so); wrong paths, clashing
model overrides and a different init_from tokenizer are errors naming the setting; resume keeps it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from coembed.checkpoint import MODEL_FILE, TOKENIZER_FILE, read_tensors
from coembed.data.synthetic.shapes import ShapesConfig, generate
from coembed.errors import ConfigError
from coembed.tokenizer import Tokenizer
from coembed.train.config import TrainConfig, build_train_config
from coembed.train.loop import train
from coembed.train.tokenizer_source import same_vocabulary

PROBE = ["a large red circle on the left of a small blue star", "from top to bottom: a green ring, a cyan heart"]


@pytest.fixture(scope="module")
def other_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, smaller shapes set drawn with another seed: a BPE trained on it has other ids."""
    root = tmp_path_factory.mktemp("other") / "shapes"
    generate(ShapesConfig(train=64, val=16, test=0, heldout=0, seed=7, workers=1), root)
    return root


def finetune(data: Path, out: Path, settings: dict, **extra) -> TrainConfig:
    # lr 1e-12: one AdamW step moves no weight measurably, so the saved weights are the warm start's
    return TrainConfig(data=str(data), out=str(out), **{**settings, "max_steps": 1, "lr": 1e-12, "warmup_steps": 0,
                                                          "val_samples": 0, **extra})


def ids(tokenizer: Tokenizer) -> list[list[int]]:
    return [tokenizer.encode(t) for t in PROBE]


def test_finetuning_on_other_data_keeps_token_ids_and_loads_all_weights(tiny_checkpoint: Path, other_data: Path,
                                                                          tiny_settings: dict, tmp_path: Path) -> None:
    result = train(finetune(other_data, tmp_path / "ft", tiny_settings, init_from=str(tiny_checkpoint),
                            tokenizer_from=str(tiny_checkpoint)))
    source = Tokenizer.from_file(tiny_checkpoint / TOKENIZER_FILE)
    reused = Tokenizer.from_file(result.checkpoint / TOKENIZER_FILE)
    assert ids(reused) == ids(source) and same_vocabulary(reused, source)
    before, after = read_tensors(tiny_checkpoint / MODEL_FILE), read_tensors(result.checkpoint / MODEL_FILE)
    assert before.keys() == after.keys()
    for key, value in before.items():  # every weight, the token embedding included, came from the source run
        if "running_" in key or key.endswith("num_batches_tracked"):
            continue  # batch-norm statistics: the training step's forward pass updates them
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-6, msg=key)


def test_without_tokenizer_from_the_ids_differ_and_a_warning_says_so(tiny_checkpoint: Path, other_data: Path, tiny_settings: dict,
                                                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = train(finetune(other_data, tmp_path / "ft", tiny_settings, init_from=str(tiny_checkpoint)))
    own = Tokenizer.from_file(result.checkpoint / TOKENIZER_FILE)
    assert not same_vocabulary(own, Tokenizer.from_file(tiny_checkpoint / TOKENIZER_FILE))
    assert "set tokenizer_from" in capsys.readouterr().err


def test_a_wrong_path_is_a_config_error_naming_the_field(other_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tokenizer_from.*does not exist"):
        train(finetune(other_data, tmp_path / "ft", tiny_settings, tokenizer_from=str(tmp_path / "nowhere")))
    assert not (tmp_path / "ft").exists()
    with pytest.raises(ConfigError, match="tokenizer_from must be a checkpoint or run folder path"):
        build_train_config({"data": str(other_data), "out": str(tmp_path / "x")}, sets=["tokenizer_from=5"])


def test_a_model_override_clashing_with_the_tokenizer_is_refused(tiny_checkpoint: Path, other_data: Path, tiny_settings: dict,
                                                                   tmp_path: Path) -> None:
    settings = {**tiny_settings, "model": {**tiny_settings["model"], "text.vocab_size": 4000}}
    with pytest.raises(ConfigError, match=r"tokenizer_from .*model\.text\.vocab_size=4000"):
        train(finetune(other_data, tmp_path / "ft", settings, tokenizer_from=str(tiny_checkpoint)))


def test_init_from_with_another_tokenizer_than_tokenizer_from_is_refused(tiny_checkpoint: Path, other_data: Path, tiny_settings: dict,
                                                                           tmp_path: Path) -> None:
    other = train(finetune(other_data, tmp_path / "other", tiny_settings)).checkpoint  # its own BPE
    with pytest.raises(ConfigError, match="init_from .* another tokenizer than tokenizer_from"):
        train(finetune(other_data, tmp_path / "ft", tiny_settings, init_from=str(other), tokenizer_from=str(tiny_checkpoint)))


def test_resume_keeps_tokenizer_from(tiny_checkpoint: Path, other_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    cfg = finetune(other_data, tmp_path / "ft", tiny_settings, tokenizer_from=str(tiny_checkpoint), max_steps=2, save_every=1)
    train(cfg)
    moved = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, moved)
    with pytest.raises(ConfigError, match="cannot resume with changed settings.*tokenizer_from"):
        train(TrainConfig(**{**cfg.to_dict(), "tokenizer_from": str(moved)}), resume=True)
