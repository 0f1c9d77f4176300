"""ViLT's word-patch alignment (WPA): an optimal-transport distance between the text and image states
of a pair, computed with the inexact proximal point method (IPOT, Xie et al., 2020) as in ViLT / UNITER.

The cost of moving word i to patch j is their cosine distance; IPOT finds a transport plan with
uniform marginals over the real words and patches (padding and the special positions take no part).
The plan is computed without gradient; the distance ``sum_ij C_ij T_ij`` is differentiable in the
states through the cost. The WPA loss lowers the distance of matched pairs and raises it for the
rest: ``(sum d_pos - sum d_neg) / N``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_cost", "ipot", "wpa_distance", "wpa_loss"]


def cosine_cost(x: Tensor, y: Tensor, eps: float = 1e-5) -> Tensor:
    """``1 - cos(x_i, y_j)``: (B, M, D), (B, N, D) -> (B, M, N)."""
    return 1 - F.normalize(x, dim=-1, eps=eps) @ F.normalize(y, dim=-1, eps=eps).transpose(1, 2)


@torch.no_grad()
def ipot(cost: Tensor, x_mask: Tensor, y_mask: Tensor, *, beta: float = 0.5, iterations: int = 50, inner: int = 1) -> Tensor:
    """Transport plan (B, M, N) between the real rows (``x_mask`` (B, M) True) and columns (``y_mask``
    (B, N)) of ``cost`` (B, M, N); zero on padding. Row sums are 1/m exactly, column sums tend to 1/n."""
    if cost.ndim != 3 or x_mask.shape != cost.shape[:2] or y_mask.shape != (cost.shape[0], cost.shape[2]):
        raise ValueError(f"ipot needs cost (B, M, N), x_mask (B, M), y_mask (B, N); got {tuple(cost.shape)}, "
                         f"{tuple(x_mask.shape)}, {tuple(y_mask.shape)}")
    if not bool(x_mask.any(1).all() and y_mask.any(1).all()):
        raise ValueError("every pair needs at least one real position on each side")
    joint = (x_mask[:, :, None] & y_mask[:, None, :]).to(cost.dtype)  # (B, M, N)
    m = x_mask.sum(1, keepdim=True).to(cost.dtype)  # (B, 1)
    n = y_mask.sum(1, keepdim=True).to(cost.dtype)
    kernel = torch.exp(-cost / beta) * joint
    plan = joint.clone()
    sigma = x_mask.to(cost.dtype) / m  # (B, M) row scaling, updated last (ViLT's order)
    for _ in range(iterations):
        q = kernel * plan
        for _ in range(inner):
            # Padding gets a huge denominator so its scaling factor is ~0 (ViLT adds 1e4 there).
            delta = 1 / (n * (sigma[:, None, :] @ q).squeeze(1) + (~y_mask) * 1e4)  # (B, N)
            sigma = 1 / (m * (q @ delta[:, :, None]).squeeze(2) + (~x_mask) * 1e4)  # (B, M)
        plan = sigma[:, :, None] * q * delta[:, None, :]
    return plan * joint


def wpa_distance(text: Tensor, image: Tensor, text_mask: Tensor, image_mask: Tensor, **ipot_args) -> Tensor:
    """OT distance (B,) between text states (B, M, D) and image states (B, N, D) over the masked-in positions."""
    cost = cosine_cost(text.float(), image.float())
    plan = ipot(cost.detach(), text_mask, image_mask, **ipot_args)
    return (cost * plan).sum(dim=(1, 2))


def wpa_loss(distance: Tensor, labels: Tensor) -> Tensor:
    """``(sum of matched distances - sum of unmatched ones) / N``: ``distance`` (N,), ``labels`` (N,) 1 = matched."""
    if distance.ndim != 1 or labels.shape != distance.shape:
        raise ValueError(f"wpa_loss needs distance (N,) and labels (N,), got {tuple(distance.shape)} and {tuple(labels.shape)}")
    sign = torch.where(labels.bool(), 1.0, -1.0).to(distance.dtype)
    return (sign * distance).sum() / distance.shape[0]
