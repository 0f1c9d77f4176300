"""The VQA losses and batch builders against naive references: answer-only next-token cross-entropy
(a loop over positions), soft-score BCE (the formula written out), the ``<sot> question answer <eot>``
rows and their mask, and the soft-score targets (the VQA accuracy of each candidate)."""

from __future__ import annotations

import math

import pytest
import torch

from coembed.data.vqa_pairs import answer_scores, answer_vocabulary, qa_tokens, question_prompts, target_answer
from coembed.data.datasets import Sample
from coembed.eval.vqa import vqa_accuracy
from coembed.losses.vqa import answer_loss, soft_score_bce
from coembed.tokenizer import Tokenizer

TEXTS = ["how many red circles are in the image?", "is the square left of the circle?", "what colour is the cross?",
         "red", "blue", "yes", "no", "left", "right", "two", "zero"] * 4


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(TEXTS, vocab_size=300)


def _naive_answer_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, smoothing: float) -> float:
    total, count = 0.0, 0
    for b in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            if not mask[b, t]:
                continue  # a question token or padding: read, never scored
            logp = torch.log_softmax(logits[b, t - 1].double(), dim=-1)
            nll = -logp[tokens[b, t]].item()
            total += (1 - smoothing) * nll + smoothing * (-logp.mean().item())
            count += 1
    return total / count


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_answer_loss_scores_only_the_answer_tokens(tokenizer: Tokenizer, smoothing: float) -> None:
    tokens, mask = qa_tokens(tokenizer, TEXTS[:3], ["two", "yes", "red"], context_length=32)
    logits = torch.randn(*tokens.shape, tokenizer.vocab_size, generator=torch.Generator().manual_seed(0))
    got = answer_loss(logits, tokens, mask, label_smoothing=smoothing).item()
    assert got == pytest.approx(_naive_answer_loss(logits, tokens, mask, smoothing), rel=1e-5)
    # the question's logits do not matter: changing them leaves the loss as it was
    question = ~mask & (tokens != tokenizer.pad_id)
    shifted_question = torch.zeros_like(mask)
    shifted_question[:, :-1] = question[:, 1:]  # logits at t predict token t + 1
    noisy = logits.clone()
    noisy[shifted_question] += 5 * torch.randn_like(noisy[shifted_question])
    assert answer_loss(noisy, tokens, mask, label_smoothing=smoothing).item() == pytest.approx(got, rel=1e-6)


def test_answer_loss_rejects_a_mask_without_answers(tokenizer: Tokenizer) -> None:
    tokens, mask = qa_tokens(tokenizer, TEXTS[:2], ["two", "yes"], context_length=32)
    logits = torch.zeros(*tokens.shape, tokenizer.vocab_size)
    with pytest.raises(ValueError, match="no answer token"):
        answer_loss(logits, tokens, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="bool"):
        answer_loss(logits, tokens, mask.long())


def test_soft_score_bce_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, generator=g)
    targets = torch.rand(4, 6, generator=g).round(decimals=1)
    want = 0.0
    for b in range(4):
        for a in range(6):
            p = 1 / (1 + math.exp(-logits[b, a].item()))
            t = targets[b, a].item()
            want -= t * math.log(p) + (1 - t) * math.log(1 - p)
    assert soft_score_bce(logits, targets).item() == pytest.approx(want / 4, rel=1e-5)  # summed over answers, mean over batch
    with pytest.raises(ValueError, match="soft scores"):
        soft_score_bce(logits, targets + 1)


def test_qa_rows_are_the_prompt_then_the_answer(tokenizer: Tokenizer) -> None:
    questions, answers = TEXTS[:3], ["two", "left", "red"]
    tokens, mask = qa_tokens(tokenizer, questions, answers, context_length=32)
    prompts = question_prompts(tokenizer, questions, 32, answer_room=4)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        row = [t for t in tokens[i].tolist()]
        tail = tokenizer.encode(answer) + [tokenizer.eot_id]
        assert row[: len(prompt)] == prompt  # the question part is what the answerer is prompted with at inference
        assert row[len(prompt) : len(prompt) + len(tail)] == tail
        assert mask[i].nonzero().flatten().tolist() == list(range(len(prompt), len(prompt) + len(tail)))
        assert tokenizer.decode(row[len(prompt) : len(prompt) + len(tail) - 1]).strip() == answer
    # a row too long keeps its answer and loses the end of its question
    short, short_mask = qa_tokens(tokenizer, [questions[0]], ["two"], context_length=6)
    assert short.shape[1] == 6 and short[0, 0] == tokenizer.sot_id and short[0, -1] == tokenizer.eot_id
    assert short_mask[0].tolist() == [False] * (6 - 1 - len(tokenizer.encode("two"))) + [True] * (1 + len(tokenizer.encode("two")))


def test_answer_scores_are_each_candidates_vqa_accuracy() -> None:
    rows = [["two"] * 10, ["red"] * 8 + ["blue"] * 2, ["yes"] * 2 + ["no"] * 8]
    vocabulary = answer_vocabulary([Sample("x.png", ("q",), {"answers": r}) for r in rows])
    assert vocabulary == ("2", "blue", "no", "red", "yes")  # normalised ("two" -> "2") and sorted
    scores = answer_scores(rows, vocabulary)
    for i, row in enumerate(rows):
        for j, candidate in enumerate(vocabulary):
            want = vqa_accuracy(candidate, row) if candidate in {"2" if a == "two" else a for a in row} else 0.0
            assert scores[i, j].item() == pytest.approx(want)
    assert scores[1, vocabulary.index("blue")].item() == pytest.approx(0.6)  # two of ten annotators: 0.6
    assert target_answer(rows[1]) == "red" and target_answer(["zero"] * 10) == "0"
