"""Transformer feed-forward block with CLIP's parameter names (``c_fc``, ``c_proj``)."""

from __future__ import annotations

import torch
from torch import nn

# "gelu": exact GELU (OpenCLIP, timm); "quick_gelu": OpenAI's CLIP weights; "gelu_tanh": the tanh
# approximation Hugging Face's SigLIP uses (``gelu_pytorch_tanh``).
ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh")


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    """The activation module called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name == "quick_gelu":
        return QuickGELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


class Mlp(nn.Module):
    """Two linear layers with a GELU (or QuickGELU) between them.

    Args:
        width: input and output width.
        hidden: hidden width (usually ``4 * width``).
        quick_gelu: use QuickGELU instead of exact GELU (ignored when ``act`` is given).
        act: activation name, one of :data:`ACTIVATIONS`.
    """

    def __init__(self, width: int, hidden: int, *, quick_gelu: bool = False, act: str | None = None) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = make_activation(act or ("quick_gelu" if quick_gelu else "gelu"))
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))
