"""Multihead attention pooling (MAP): one learned probe attends over all tokens (SigLIP's image head).

Computes, as Hugging Face's ``SiglipMultiheadAttentionPoolingHead`` and timm's
``AttentionPoolLatent`` do: ``y = attn(probe, tokens, tokens)``, then ``y + mlp(ln(y))``, and returns
the probe's row. The attention weights use ``nn.MultiheadAttention``'s packed layout
(``in_proj_weight`` = [q; k; v]).
"""

from __future__ import annotations

import torch
from torch import nn

from coembed.layers.attention import Attention
from coembed.layers.mlp import Mlp


class MapHead(nn.Module):
    """(B, T, width) -> (B, width).

    Args:
        width: token width.
        heads: attention heads.
        mlp_hidden: hidden width of the MLP.
        act: activation name (see :data:`coembed.layers.mlp.ACTIVATIONS`).
        eps: LayerNorm epsilon.
    """

    def __init__(self, width: int, heads: int, mlp_hidden: int, *, act: str = "gelu", eps: float = 1e-5) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.attn = Attention(width, heads)
        self.ln = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_hidden, act=act)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        probe = self.probe.to(tokens.dtype).expand(tokens.shape[0], -1, -1)  # (B, 1, width)
        x = self.attn.cross(probe, tokens)
        x = x + self.mlp(self.ln(x))
        return x[:, 0]
