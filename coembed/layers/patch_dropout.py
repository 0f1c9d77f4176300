"""FLIP patch dropout: train the image tower on a random subset of its patch tokens.

FLIP (Li et al., 2023) drops a large share of the patches of every training image: the encoder's
cost falls with the token count, so more images fit in the same compute, and the model sees the
full image again at evaluation. The subset is drawn as OpenCLIP's ``PatchDropout`` draws it (one
standard normal score per patch, keep the top ``max(1, int(n * (1 - p)))``), so with the same seed
both libraries keep the same patches. MAE's random masking (coembed.models.mae) ranks the patches
with the same draw, from a seeded generator.
"""

from __future__ import annotations

import torch


def kept_patch_count(num_patches: int, prob: float) -> int:
    """How many of ``num_patches`` tokens survive dropout with probability ``prob`` (at least one)."""
    return max(1, int(num_patches * (1.0 - prob)))


def rank_patches(batch: int, count: int, *, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """A random order of ``count`` patches per image, (batch, count) indices: one standard normal score per
    patch, highest first, so ``[:, :k]`` are the ``k`` patches OpenCLIP's top-k of the same scores keeps.

    Args:
        batch: images.
        count: patches per image.
        generator: CPU generator of the scores (the global RNG when None, as OpenCLIP draws them).
        device: where the indices go; the scores are always drawn on the CPU, so a seed picks the same
            patches on any device.
    """
    scores = torch.randn(batch, count, generator=generator)
    return scores.argsort(dim=-1, descending=True).to(device)


def drop_patches(tokens: torch.Tensor, prob: float, *, keep_first: bool) -> torch.Tensor:
    """Keep a random subset of patch tokens per image: (B, T, D) -> (B, T', D).

    Args:
        tokens: token sequence, position embeddings already added.
        prob: share of patch tokens to drop, in [0, 1).
        keep_first: token 0 is a class token, always kept and not counted among the patches.
    """
    if not 0.0 <= prob < 1.0:
        raise ValueError(f"patch dropout probability must be in [0, 1), got {prob}")
    if prob == 0.0:
        return tokens
    first, patches = (tokens[:, :1], tokens[:, 1:]) if keep_first else (None, tokens)
    batch, count = patches.shape[:2]
    keep = rank_patches(batch, count, device=tokens.device)[:, : kept_patch_count(count, prob)]
    kept = patches[torch.arange(batch, device=tokens.device)[:, None], keep]
    return kept if first is None else torch.cat([first, kept], dim=1)
