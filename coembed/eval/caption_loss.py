"""Validation captioning loss of any model with the captioning interface (``caption_memory`` /
``caption_logits``: the bridges, the causal LM, the captioners).

Each image's first caption, teacher-forced; the mean next-token cross-entropy over every real target
token of the split (token-weighted, so batch boundaries do not change it). Deterministic.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from coembed.data.datasets import ImageFolderDataset, collate_images
from coembed.loading import default_preprocess
from coembed.losses.captioning import IGNORE_INDEX, caption_targets
from coembed.models.families import context_length
from coembed.towers.text_transformer import trim_padding


def _pad_id(model: torch.nn.Module) -> int:
    """The padding id a captioning model reads: its own, its config's, or (BLIP, CoCa) its text section's."""
    if hasattr(model, "pad_id"):
        return model.pad_id
    return model.cfg.pad_id if hasattr(model.cfg, "pad_id") else model.cfg.text.pad_id


@torch.no_grad()
def caption_validation_loss(model: torch.nn.Module, tokenizer, root: Path, samples: list, batch_size: int = 64) -> float:
    """Mean next-token loss of the first caption of each of ``samples`` (images under ``root``); NaN if none loads."""
    model.eval()
    loader = DataLoader(ImageFolderDataset(root, [s.image for s in samples], default_preprocess(model)), batch_size=batch_size,
                        collate_fn=collate_images)
    device = next(model.parameters()).device
    pad = _pad_id(model)
    total, count = 0.0, 0
    for batch in loader:
        if batch.images is None:
            continue
        captions = [samples[i].captions[0] for i in batch.indices.tolist()]
        tokens = trim_padding(tokenizer(captions, context_length=context_length(model)), pad).to(device)  # (B, T)
        logits = model.caption_logits(model.caption_memory(batch.images.to(device)), tokens)[:, :-1].float()
        targets = caption_targets(tokens, pad)  # (B, T - 1)
        losses = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                   ignore_index=IGNORE_INDEX, reduction="sum")
        total += losses.item()
        count += int((targets != IGNORE_INDEX).sum())
    return total / count if count else float("nan")
