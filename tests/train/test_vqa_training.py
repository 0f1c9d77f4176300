"""The trainer with ``task: vqa``: it reads SPLIT/vqa.jsonl (questions as the text, answers carried
along), stores the training answer vocabulary in a classifier's config, validates with
``val_vqa_acc`` per question type, resumes exactly, and refuses mismatched settings in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import coembed
from coembed.data.vqa_pairs import answer_vocabulary, vqa_samples
from coembed.errors import ConfigError, DataError
from coembed.eval.vqa_answer import vqa_split_accuracy
from coembed.train.config import TrainConfig
from coembed.train.loop import train
from tests.helpers import VQA_SMALL, assert_same_runs, copy_with_vqa, interrupt_then_resume

SMALL = VQA_SMALL


@pytest.fixture(scope="module")
def vqa_data(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``shapes_data`` with SPLIT/vqa.jsonl (3 questions per image)."""
    return copy_with_vqa(shapes_data, tmp_path_factory.mktemp("vqa") / "shapes", questions_per_image=3)


def _cfg(data: Path, out: Path, preset: str, **kw) -> TrainConfig:
    settings = {"task": "vqa", "batch_size": 16, "max_steps": 4, "log_every": 1, "save_every": 2, "val_samples": 0, "workers": 0,
                "precision": "fp32", "progress": False, "warmup_steps": 1, "vocab_size": 300, **kw}
    return TrainConfig(data=str(data), out=str(out), preset=preset, model=dict(SMALL[preset]), **settings)


@pytest.mark.parametrize("preset", ["vqa-albef-tiny", "vqa-blip-tiny"])
def test_resume_reproduces_the_uninterrupted_run(vqa_data: Path, tmp_path: Path, preset: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    train(_cfg(vqa_data, tmp_path / "ref", preset))
    interrupt_then_resume(_cfg(vqa_data, tmp_path / "b", preset), 3, monkeypatch)
    lines = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    term = "loss_vqa" if preset == "vqa-albef-tiny" else "loss_answer"
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all(term in x for x in lines)
    assert_same_runs(tmp_path / "ref", tmp_path / "b")


def test_the_classifier_keeps_the_training_answers_and_validation_is_the_vqa_accuracy(vqa_data: Path, tmp_path: Path) -> None:
    result = train(_cfg(vqa_data, tmp_path / "run", "vqa-albef-tiny", max_steps=2, val_samples=40, val_every=2))
    model, _, tokenizer = coembed.load(tmp_path / "run")
    assert model.cfg.answers == answer_vocabulary(vqa_samples(vqa_data / "train"))
    val = vqa_samples(vqa_data / "val")[:40]
    want, _ = vqa_split_accuracy(model, tokenizer, vqa_data / "val", val)
    assert result.last_val["val_vqa_acc"] == pytest.approx(want.overall)
    assert {k for k in result.last_val if k.startswith("val_vqa_acc/")} == {f"val_vqa_acc/{t}" for t in want.per_type}


def test_mismatched_task_and_missing_questions_are_one_line_errors(vqa_data: Path, shapes_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task 'vqa' needs a VQA model .* 'albef-tiny' is a albef model"):
        train(TrainConfig(data=str(vqa_data), out=str(tmp_path / "a"), preset="albef-tiny", task="vqa"))
    with pytest.raises(ConfigError, match="'vqa-blip-tiny' is a blip_vqa model, which answers questions: set task: vqa"):
        train(_cfg(vqa_data, tmp_path / "b", "vqa-blip-tiny", task="caption"))
    with pytest.raises(DataError, match=r"train/vqa.jsonl does not exist: .*`coembed data vqa "):
        train(_cfg(shapes_data, tmp_path / "c", "vqa-blip-tiny"))
    with pytest.raises(ValueError, match="task must be one of"):
        _cfg(vqa_data, tmp_path / "d", "vqa-blip-tiny", task="qa")
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
