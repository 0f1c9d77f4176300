"""Question-answer pairs of a split (``SPLIT/vqa.jsonl``, written by ``coembed data vqa``) as training
and evaluation inputs: samples whose one "caption" is the question, the answer vocabulary of a VQA
classifier, its soft-score targets, and the ``<sot> question answer <eot>`` rows of a generative answerer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from coembed.data.datasets import Sample
from coembed.data.synthetic.vqa import VQA_FILE, read_vqa
from coembed.errors import DataError
from coembed.eval.vqa import normalize_answer, vqa_accuracy


def vqa_samples(root: str | Path) -> list[Sample]:
    """One :class:`Sample` per question of ``root/vqa.jsonl``: ``captions`` is ``(question,)`` and
    ``meta`` holds ``answers`` (the annotators' answers) and ``type``.

    Raises:
        DataError: the file is missing (names it and the command that writes it) or a line is invalid.
    """
    path = Path(root) / VQA_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist: VQA reads each split's {VQA_FILE}; write it with "
                        f"`coembed data vqa {Path(root).parent}`")
    items = read_vqa(path)
    if not items:
        raise DataError(f"{path} holds no question")
    return [Sample(x["image"], (x["question"],), {"answers": tuple(x["answers"]), "type": x["type"]}) for x in items]


def target_answer(answers: Sequence[str]) -> str:
    """The answer a generative answerer is trained to give: the most frequent normalised one (first on ties)."""
    return Counter(normalize_answer(a) for a in answers).most_common(1)[0][0]


def answer_vocabulary(samples: Sequence[Sample]) -> tuple[str, ...]:
    """The sorted normalised answers of ``samples`` (every annotator's): a classifier's answer classes."""
    return tuple(sorted({normalize_answer(a) for s in samples for a in s.meta["answers"]}))


def answer_scores(answers: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> torch.Tensor:
    """Soft-score targets ``(B, A)``: entry (i, j) is the VQA accuracy answer ``vocabulary[j]`` scores on
    question i (:func:`coembed.eval.vqa.vqa_accuracy`); answers outside the vocabulary get no column."""
    index = {a: j for j, a in enumerate(vocabulary)}
    scores = torch.zeros(len(answers), len(vocabulary))
    for i, row in enumerate(answers):
        for candidate in {normalize_answer(a) for a in row} & index.keys():
            scores[i, index[candidate]] = vqa_accuracy(candidate, row)
    return scores


def qa_tokens(tokenizer, questions: Sequence[str], answers: Sequence[str], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``<sot> question answer <eot>`` rows and their answer mask.

    The ids are the concatenation of each part's own ids, so the question part is exactly the prompt
    a generative answerer is given at inference. A row too long for ``context_length`` loses the end of
    its question, never its answer.

    Returns:
        ``(B, T)`` ids padded with ``tokenizer.pad_id`` to the longest row, and a ``(B, T)`` bool mask,
        True at the answer tokens and their ``<eot>``.

    Raises:
        ValueError: lengths differ, or an answer does not fit in ``context_length`` with ``<sot>``.
    """
    if len(questions) != len(answers):
        raise ValueError(f"questions and answers must be of one length, got {len(questions)} and {len(answers)}")
    rows, masks = [], []
    for question, answer in zip(questions, answers):
        tail = tokenizer.encode(answer) + [tokenizer.eot_id]
        room = context_length - 1 - len(tail)  # question tokens that fit after <sot>
        if room < 0:
            raise ValueError(f"answer {answer!r} has {len(tail) - 1} tokens: too long for context_length {context_length}")
        head = [tokenizer.sot_id] + tokenizer.encode(question)[:room]
        rows.append(head + tail)
        masks.append([False] * len(head) + [True] * len(tail))
    width = max(map(len, rows))
    tokens = torch.full((len(rows), width), tokenizer.pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)  # (B, T)
    for i, (row, m) in enumerate(zip(rows, masks)):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, : len(m)] = torch.tensor(m)
    return tokens, mask


def question_prompts(tokenizer, questions: Sequence[str], context_length: int, answer_room: int) -> list[list[int]]:
    """``<sot> question`` ids of each question, cut to leave ``answer_room`` positions for the answer and ``<eot>``."""
    room = context_length - 1 - answer_room
    return [[tokenizer.sot_id] + tokenizer.encode(q)[: max(room, 0)] for q in questions]
