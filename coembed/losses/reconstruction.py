"""Masked image modelling (MAE, He et al., 2022) as pure functions: pixel patches and their loss.

- :func:`patchify` / :func:`unpatchify`: images <-> one row of pixels per patch, in MAE's layout
  (``nchpwq -> nhwpqc``: patches row-major, and inside a patch its rows, columns, then the channels).
- :func:`masked_patch_mse`: the mean squared error of predicted patches, over the masked patches
  only, against each patch's own normalised pixels (MAE's ``norm_pix_loss``) or the raw pixels.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["NORM_PIX_EPS", "masked_patch_mse", "normalize_patches", "patchify", "unpatchify"]

NORM_PIX_EPS = 1e-6  # added to each patch's variance, as MAE


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, (H / p) * (W / p), p * p * C) pixel rows, MAE's layout."""
    b, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not a multiple of patch_size {patch_size}")
    gh, gw = h // patch_size, w // patch_size
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)  # (B, C, gh, p, gw, q)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, q, C): nchpwq -> nhwpqc
    return x.reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(patches: Tensor, patch_size: int, grid: tuple[int, int] | None = None) -> Tensor:
    """Inverse of :func:`patchify`: (B, L, p * p * C) -> (B, C, H, W); ``grid`` (rows, columns) of a
    non-square image (square when None)."""
    b, length, dim = patches.shape
    channels = dim // (patch_size * patch_size)
    if channels * patch_size * patch_size != dim:
        raise ValueError(f"patch rows of {dim} values do not hold whole {patch_size}x{patch_size} patches")
    gh, gw = grid or (round(length**0.5),) * 2
    if gh * gw != length:
        raise ValueError(f"{length} patches do not form a {gh}x{gw} grid")
    x = patches.reshape(b, gh, gw, patch_size, patch_size, channels)  # (B, gh, gw, p, q, C)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, p, gw, q)
    return x.reshape(b, channels, gh * patch_size, gw * patch_size)


def normalize_patches(patches: Tensor, eps: float = NORM_PIX_EPS) -> Tensor:
    """Each patch's pixels minus their mean over their (unbiased) standard deviation: MAE's targets."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)  # unbiased, as MAE's torch.var
    return (patches - mean) / (var + eps).sqrt()


def masked_patch_mse(pred: Tensor, target_patches: Tensor, mask: Tensor, *, norm_pix: bool = True) -> Tensor:
    """MAE's reconstruction loss: squared error averaged over each patch's values, then over the masked
    patches of the batch (visible patches take no part).

    Args:
        pred: (B, L, D) predicted patches.
        target_patches: (B, L, D) pixel rows (:func:`patchify` of the input images).
        mask: (B, L), 1 (or True) where the patch was masked from the encoder.
        norm_pix: compare with each patch's normalised pixels (:func:`normalize_patches`).

    Returns:
        A scalar in float32.
    """
    if pred.shape != target_patches.shape or mask.shape != pred.shape[:2]:
        raise ValueError(f"shapes differ: pred {tuple(pred.shape)}, target {tuple(target_patches.shape)}, mask {tuple(mask.shape)}")
    target = target_patches.float()
    if norm_pix:
        target = normalize_patches(target)
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (B, L)
    weights = mask.float()
    if not weights.sum() > 0:
        raise ValueError("the mask selects no patch")
    return (per_patch * weights).sum() / weights.sum()
