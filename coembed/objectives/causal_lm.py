"""The ``causal_lm`` family's objective: next-token prediction on the captions (the images are not read).

With ``position_jitter`` the whole batch starts at one random position in ``[0, context_length - T]``
drawn from the step's generator (reproducible, resumable), so every position embedding is trained: a
bridge later puts its image tokens before the caption.
"""

from __future__ import annotations

import torch

from coembed.losses.captioning import caption_loss
from coembed.objectives import FusionBatch
from coembed.towers.text_transformer import trim_padding


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"lm": ...}``: the mean next-token loss over the captions' real tokens."""
    cfg = model.cfg
    tokens = trim_padding(batch.tokens, cfg.pad_id)  # (B, T)
    offset = 0
    if cfg.position_jitter:
        offset = int(torch.randint(0, cfg.context_length - tokens.shape[1] + 1, (1,), generator=generator))
    return {"lm": caption_loss(model(tokens, offset=offset), tokens, cfg.pad_id)}
