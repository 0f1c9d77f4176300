"""Transformer feed-forward block with CLIP's parameter names (``c_fc``, ``c_proj``)."""

from __future__ import annotations

import torch
from torch import nn


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    """Two linear layers with a GELU (or QuickGELU) between them.

    Args:
        width: input and output width.
        hidden: hidden width (usually ``4 * width``).
        quick_gelu: use QuickGELU instead of exact GELU.
    """

    def __init__(self, width: int, hidden: int, *, quick_gelu: bool = False) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))
