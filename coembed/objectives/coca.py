"""CoCa's objective: CLIP's contrastive loss between the pooled image and the text CLS embedding, and
the captioning loss of the multimodal decoder, both from one pass of each tower.

CoCa weights them 1 (contrastive) and 2 (captioning); :data:`DEFAULT_WEIGHTS` carries the 2, and the
trainer uses it unless ``loss_weights`` says otherwise (``--set loss_weights.caption=1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coembed.losses.captioning import caption_loss
from coembed.losses.contrastive import clip_loss
from coembed.objectives import FusionBatch
from coembed.towers.text_transformer import trim_padding

DEFAULT_WEIGHTS = {"caption": 2.0}


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"contrastive": ..., "caption": ...}`` unweighted; ``progress``, ``weights`` and ``generator`` are unused."""
    tokens = trim_padding(batch.tokens, model.cfg.text.pad_id)
    image_tokens = model.image_tokens(batch.images)  # (B, 1 + grid*grid, vision width)
    image_emb = F.normalize(model.image_embedding(image_tokens), dim=-1)
    text_emb, states = model.text(tokens)  # (B, embed_dim), (B, T, width)
    logits = model.decode(model.attn_pool(image_tokens), states)  # (B, T, vocab)
    return {"contrastive": clip_loss(image_emb.float(), F.normalize(text_emb, dim=-1).float(), model.temperature().float()),
            "caption": caption_loss(logits, tokens, model.cfg.text.pad_id)}
