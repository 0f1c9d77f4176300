"""Multi-head self-attention with the parameter layout of ``torch.nn.MultiheadAttention``.

The names (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) match OpenCLIP/OpenAI CLIP
checkpoints so real weights load without renaming; the computation goes through
``F.scaled_dot_product_attention`` so PyTorch picks a fused kernel where one exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Self-attention over a batch-first sequence.

    Args:
        width: model width (embedding size of each token).
        heads: number of attention heads; must divide ``width``.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, *, causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend ``x`` (B, T, width) to itself; ``causal`` hides later positions, ``mask`` (B, 1, 1, T),
        True where a key may be attended, hides padding keys (bidirectional encoders)."""
        B, T, C = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3C)
        qkv = qkv.view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, T, head_dim)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out_proj(y)

    def _cross_qkv(self, query: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, Q, C = query.shape
        T = context.shape[1]
        w_q, w_kv = self.in_proj_weight.split([C, 2 * C])
        b_q, b_kv = self.in_proj_bias.split([C, 2 * C])
        q = F.linear(query, w_q, b_q).view(B, Q, self.heads, C // self.heads).transpose(1, 2)  # (B, heads, Q, hd)
        kv = F.linear(context, w_kv, b_kv).view(B, T, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # each (B, heads, T, head_dim)
        return q, k, v

    def _cross_out(self, y: torch.Tensor) -> torch.Tensor:
        B, _, Q, _ = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(B, Q, -1))  # (B, Q, C)

    def cross(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attend ``query`` (B, Q, width) to ``context`` (B, T, width), as ``nn.MultiheadAttention(q, kv, kv)``.

        The first third of ``in_proj_weight`` projects the queries, the rest the keys and values.
        """
        q, k, v = self._cross_qkv(query, context)
        return self._cross_out(F.scaled_dot_product_attention(q, k, v))

    def cross_with_probs(self, query: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`cross` computed explicitly, also returning the attention probabilities (B, heads, Q, T),
        in the autograd graph (for Grad-CAM over cross-attention maps)."""
        q, k, v = self._cross_qkv(query, context)
        probs = torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)  # (B, heads, Q, T)
        return self._cross_out(probs @ v), probs
