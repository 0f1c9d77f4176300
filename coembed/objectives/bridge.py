"""The captioning objective of the bridges that feed an LM (LLaVA, Flamingo; Q-Former stage 2 uses it too).

Term ``"lm"``: the LM's next-token loss on the caption tokens given the image (the image prefix or the
cross-attended latents carry no loss). Padding is trimmed first; nothing here is random.
"""

from __future__ import annotations

import torch

from coembed.losses.captioning import caption_loss
from coembed.objectives import FusionBatch
from coembed.towers.text_transformer import trim_padding


def caption_term(model, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token loss of ``model.caption_logits(model.caption_memory(images), tokens)`` on the real caption tokens."""
    tokens = trim_padding(tokens, model.pad_id)  # (B, T)
    return caption_loss(model.caption_logits(model.caption_memory(images), tokens), tokens, model.pad_id)


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"lm": ...}``; ``progress``, ``weights`` and ``generator`` are unused."""
    return {"lm": caption_term(model, batch.images, batch.tokens)}
