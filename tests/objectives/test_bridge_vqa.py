"""Bridges on the VQA task: the answer loss equals a naive per-row computation; the trainer accepts
``task: vqa`` for LLaVA, Flamingo and Q-Former stage 2 and refuses it in one line for Q-Former stage 1, a
Hugging Face LM and the LM alone; a tiny bridge trains from the CLI and ``coembed eval --task vqa`` reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import coembed
from coembed.cli.main import main
from coembed.data.vqa_pairs import qa_tokens, vqa_samples
from coembed.errors import ConfigError
from coembed.eval.vqa_answer import answer, vqa_split_accuracy
from coembed.objectives import FusionBatch
from coembed.objectives.bridge import compute_losses
from coembed.objectives.qformer import compute_losses as qformer_losses
from coembed.tokenizer import Tokenizer
from coembed.train.config import TrainConfig
from coembed.train.loop import train
from tests.generation.test_bridge_decoding import build
from tests.helpers import copy_with_vqa
from tests.models.bridge_helpers import TRAIN_LM, TRAIN_VISION, images


@pytest.fixture(scope="module")
def vqa_data(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_with_vqa(shapes_data, tmp_path_factory.mktemp("vqa") / "shapes", questions_per_image=2)


@pytest.fixture(scope="module")
def tokenizer(vqa_data: Path) -> Tokenizer:
    rows = [s for s in vqa_samples(vqa_data / "train")]
    return Tokenizer.train((t for s in rows for t in [s.captions[0], *s.meta["answers"]]), vocab_size=300)


def naive_answer_loss(model, pics: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor, pad: int) -> torch.Tensor:
    """Each row alone, unpadded: mean over all answer tokens t of -log p(row[t] | image, row[:t])."""
    losses = []
    for i in range(rows.shape[0]):
        row = rows[i][rows[i] != pad]  # (L,)
        logp = F.log_softmax(model.caption_logits(model.caption_memory(pics[i : i + 1]), row[None])[0].float(), dim=-1)
        losses += [-logp[t - 1, row[t]] for t in range(1, len(row)) if mask[i, t]]
    return torch.stack(losses).mean()


@pytest.mark.parametrize("name", ["llava", "flamingo", "qformer-2"])
def test_answer_loss_equals_a_naive_computation(name: str, tokenizer: Tokenizer) -> None:
    model = build(name, tokenizer.vocab_size)
    questions = ["how many red shapes are in the image?", "is there a star?", "what colour is the circle?"]
    rows, mask = qa_tokens(tokenizer, questions, ["two", "no", "dark blue"], 12)
    pics = images(3)
    batch = FusionBatch(pics, rows, torch.arange(3), qa_tokens=rows, answer_mask=mask)
    objective = qformer_losses if name.startswith("qformer") else compute_losses
    losses = objective(model, batch, progress=0.0, weights={}, generator=torch.Generator())
    assert set(losses) == {"answer"}
    torch.testing.assert_close(losses["answer"], naive_answer_loss(model, pics, rows, mask, tokenizer.pad_id))
    caption = objective(model, FusionBatch(pics, rows, torch.arange(3)), progress=0.0, weights={}, generator=torch.Generator())
    assert set(caption) == {"lm"}  # without question-answer rows: the captioning term


def test_a_question_is_answered_by_greedy_decoding_after_it(tokenizer: Tokenizer) -> None:
    model = build("llava", tokenizer.vocab_size, context=24)  # room for the whole question and 8 answer tokens
    question = "is there a star?"
    got = answer(model, tokenizer, images(1), [question])
    row = [tokenizer.sot_id, *tokenizer.encode(question)]
    memory = model.caption_memory(images(1))
    for _ in range(model.max_answer_tokens + 1):  # the naive loop: argmax until <eot> or the answer room
        row.append(int(model.caption_logits(memory, torch.tensor([row]))[0, -1].argmax()))
        if row[-1] == tokenizer.eot_id:
            row.pop()
            break
    assert got == [tokenizer.decode(row[len(tokenizer.encode(question)) + 1 :]).strip()]


def _cfg(data: Path, out: Path, preset: str, **model) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), preset=preset, model={**TRAIN_VISION, **TRAIN_LM, **model}, task="vqa",
                       batch_size=8, max_steps=1, workers=0, precision="fp32", progress=False, val_samples=0, vocab_size=300)


def test_task_vqa_is_refused_where_it_cannot_train(vqa_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set model.stage=2"):
        train(_cfg(vqa_data, tmp_path / "a", "qformer-tiny"))
    with pytest.raises(ConfigError, match="a causal_lm model trains with task 'caption'"):
        train(TrainConfig(data=str(vqa_data), out=str(tmp_path / "b"), preset="lm-tiny", task="vqa"))
    with pytest.raises(ConfigError, match="VQA needs model.stage=2"):
        model = build("qformer-2", 300)
        model.cfg.stage = 1
        rows = torch.ones(2, 4, dtype=torch.long)
        qformer_losses(model, FusionBatch(images(2), rows, torch.arange(2), qa_tokens=rows, answer_mask=rows.bool()),
                       progress=0.0, weights={}, generator=torch.Generator())


def test_hugging_face_lm_bridges_caption_only(vqa_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tests.models.bridge_helpers import gpt2_folder

    folder = gpt2_folder(tmp_path, positions=96)
    with pytest.raises(ConfigError, match="task 'vqa' needs a coembed LM"):
        train(_cfg(vqa_data, tmp_path / "a", "flamingo-tiny", **{"lm.path": str(folder)}))


@pytest.mark.parametrize("preset,extra", [("llava-tiny", []), ("qformer-tiny", ["--set", "model.stage=2"])])
def test_trains_from_the_cli_and_eval_reads_it(vqa_data: Path, tmp_path: Path, preset: str, extra: list[str], capsys) -> None:
    sets = [f"model.{k}={v}" for k, v in {**TRAIN_VISION, **TRAIN_LM}.items()]
    sets += ["task=vqa", "batch_size=8", "max_steps=2", "workers=0", "precision=fp32", "progress=false", "val_samples=16",
             "val_every=2", "vocab_size=300", "warmup_steps=1", "log_every=1"]
    argv = ["train", "--preset", preset, "--data", str(vqa_data), "--out", str(tmp_path / "run"), *extra]
    assert main([*argv, *[a for s in sets for a in ("--set", s)]]) == 0
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss_answer" in m] == [1, 2] and "val_vqa_acc" in metrics[-1]
    capsys.readouterr()
    assert main(["eval", "--task", "vqa", "--checkpoint", str(tmp_path / "run"), "--data", str(vqa_data), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    model, _, tokenizer = coembed.load(tmp_path / "run")
    want, _ = vqa_split_accuracy(model, tokenizer, vqa_data / "test", vqa_samples(vqa_data / "test"))
    assert printed["metrics"]["vqa_accuracy"] == pytest.approx(want.overall)
