"""Answers of a VQA model (:mod:`coembed.models.vqa_classifier`, :mod:`coembed.models.blip_vqa`) and the
VQA accuracy of a split's questions (:func:`coembed.eval.vqa.evaluate_vqa`, per question type).

A model says how it answers by its ``vqa_kind``: ``"classifier"`` (argmax of ``answer_logits`` over
``cfg.answers``) or ``"generative"`` (greedy decoding after the ``<sot> question`` prompt, up to
``max_answer_tokens`` tokens, :func:`coembed.generation.decoding.greedy_search`, with the model's
:class:`~coembed.generation.spec.DecodingSpec`): the BLIP VQA decoder, the bridges to an LM (Q-Former in
stage 2) and the LM alone, which answers blind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from coembed.data.datasets import ImageFolderDataset, collate_images
from coembed.errors import ConfigError
from coembed.eval.vqa import VQAResult, evaluate_vqa
from coembed.generation.decoding import greedy_search
from coembed.generation.spec import DecodingSpec, decode_ids, decoding_spec, encode_words
from coembed.loading import default_preprocess
from coembed.models.families import context_length

KINDS = ("classifier", "generative")


def is_vqa_model(model: nn.Module) -> bool:
    """Whether ``model`` answers questions (a ``vqa_kind`` of :data:`KINDS`)."""
    return getattr(model, "vqa_kind", None) in KINDS


def check_vqa_model(model: nn.Module, where: str = "the checkpoint") -> None:
    """ConfigError naming ``where`` and its family unless ``model`` is a VQA model."""
    if not is_vqa_model(model):
        family = model.cfg.to_dict().get("family", "dual_encoder") if hasattr(model, "cfg") else type(model).__name__
        raise ConfigError(f"{where} is a {family} model, not a VQA model; train one with --preset vqa-albef-tiny, "
                          "vqa-blip-tiny, llava-tiny, flamingo-tiny or qformer-tiny (model.stage=2) --set task=vqa")


@torch.no_grad()
def answer(model: nn.Module, tokenizer, images: torch.Tensor, questions: Sequence[str]) -> list[str]:
    """The model's answer to question i about image i (``images`` ``(B, 3, H, W)`` preprocessed)."""
    check_vqa_model(model, "the model")
    if len(questions) != images.shape[0]:
        raise ValueError(f"need one question per image, got {len(questions)} and {images.shape[0]}")
    model.eval()
    if model.vqa_kind == "classifier":
        tokens = tokenizer(list(questions), context_length=context_length(model)).to(images.device)
        return [model.cfg.answers[i] for i in model.answer_logits(images, tokens).argmax(dim=-1).tolist()]
    return _generate_answers(model, tokenizer, images, questions)


def _generate_answers(model: nn.Module, tokenizer, images: torch.Tensor, questions: Sequence[str]) -> list[str]:
    """Greedy answers after each question; rows are decoded in groups of equal prompt length (the
    decoder's absolute positions admit no left padding)."""
    spec, limit = decoding_spec(model, tokenizer), _answer_room(model)
    prompts = _question_prompts(spec, tokenizer, questions, limit + 1)
    memory = model.caption_memory(images)  # (B, N, W)
    out = [""] * len(prompts)
    for length in sorted({len(p) for p in prompts}):
        rows = [i for i, p in enumerate(prompts) if len(p) == length]
        prompt = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=images.device)  # (G, P)
        group = memory[rows]  # (G, N, W)
        ids = greedy_search(lambda t: model.caption_logits(group, t), prompt, max_length=length + limit + 1,
                            eos_id=spec.stop_id, pad_id=spec.pad_id)  # (G, <= P + limit + 1)
        for i, row in zip(rows, ids[:, length:].tolist()):
            out[i] = decode_ids(tokenizer, row[: spec.end_of(row)])
    return out


def _answer_room(model: nn.Module) -> int:
    """Answer tokens decoded at most: the config's ``max_answer_tokens`` (blip_vqa) or the model's (bridges, LM)."""
    limit = getattr(model.cfg, "max_answer_tokens", None)
    return int(limit if limit is not None else model.max_answer_tokens)


def _question_prompts(spec: DecodingSpec, tokenizer, questions: Sequence[str], answer_room: int) -> list[list[int]]:
    """``start question`` ids of each question, cut to leave ``answer_room`` positions for the answer and its
    end within ``spec.max_length``: with coembed's tokenizer exactly the head of the training rows of
    :func:`coembed.data.vqa_pairs.qa_tokens` (``<sot> question``)."""
    room = spec.max_length - len(spec.start_ids) - answer_room
    return [list(spec.start_ids) + encode_words(tokenizer, q)[: max(room, 0)] for q in questions]


def predict_split(model: nn.Module, tokenizer, root: str | Path, samples: Sequence, batch_size: int = 64) -> list[str]:
    """Answers to every question of ``samples`` (:func:`coembed.data.vqa_pairs.vqa_samples`) about the
    images under ``root``; a question whose image does not load gets the empty answer (scored 0)."""
    check_vqa_model(model)
    device = next(model.parameters()).device
    loader = DataLoader(ImageFolderDataset(root, [s.image for s in samples], default_preprocess(model)), batch_size=batch_size,
                        collate_fn=collate_images)
    predictions = [""] * len(samples)
    for batch in loader:
        if batch.images is None:
            continue
        rows = batch.indices.tolist()
        for i, text in zip(rows, answer(model, tokenizer, batch.images.to(device), [samples[i].captions[0] for i in rows])):
            predictions[i] = text
    return predictions


def vqa_split_accuracy(model: nn.Module, tokenizer, root: str | Path, samples: Sequence,
                       batch_size: int = 64) -> tuple[VQAResult, list[str]]:
    """VQA accuracy of ``samples`` overall and per question type, and the predictions."""
    predictions = predict_split(model, tokenizer, root, samples, batch_size)
    result = evaluate_vqa(predictions, [s.meta["answers"] for s in samples], [s.meta["type"] for s in samples])
    return result, predictions
