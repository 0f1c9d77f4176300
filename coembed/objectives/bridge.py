"""The objective of the bridges that feed an LM (LLaVA, Flamingo; Q-Former stage 2 uses it too).

Captioning (``task: caption``), term ``"lm"``: the LM's next-token loss on the caption tokens given the
image (the image prefix or the cross-attended latents carry no loss). Padding is trimmed first.

VQA (``task: vqa``, the batch carries ``qa_tokens``), term ``"answer"``: the LM reads the image, then
``<sot> question answer <eot>``, and only the answer tokens and their ``<eot>`` are scored
(:func:`coembed.losses.vqa.answer_loss`, as :mod:`coembed.objectives.blip_vqa`, without label smoothing:
the LM's captioning loss has none either). Nothing here is random.
"""

from __future__ import annotations

import torch

from coembed.losses.captioning import caption_loss
from coembed.losses.vqa import answer_loss
from coembed.objectives import FusionBatch
from coembed.towers.text_transformer import trim_padding


def caption_term(model, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token loss of ``model.caption_logits(model.caption_memory(images), tokens)`` on the real caption tokens."""
    tokens = trim_padding(tokens, model.pad_id)  # (B, T)
    return caption_loss(model.caption_logits(model.caption_memory(images), tokens), tokens, model.pad_id)


def answer_term(model, images: torch.Tensor, qa_tokens: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Next-token loss on the answer tokens of ``<sot> question answer <eot>`` rows read after the image."""
    logits = model.caption_logits(model.caption_memory(images), qa_tokens)  # (B, T, vocab)
    return answer_loss(logits, qa_tokens, answer_mask)


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"answer": ...}`` for a batch of question-answer rows, else ``{"lm": ...}``; ``progress``,
    ``weights`` and ``generator`` are unused."""
    if batch.qa_tokens is not None and batch.answer_mask is not None:
        return {"answer": answer_term(model, batch.images, batch.qa_tokens, batch.answer_mask)}
    return {"lm": caption_term(model, batch.images, batch.tokens)}
