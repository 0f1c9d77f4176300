"""Blocks that read a second sequence (image tokens) by cross-attention: the pieces of captioning decoders.

* :class:`AttentionalPooler`: learned queries attend to the image tokens (CoCa's attentional pooling),
  OpenCLIP's ``AttentionalPooler`` with its parameter names (``query``, ``attn``, ``ln_q``, ``ln_k``).
* :class:`CrossAttentionBlock`: ``x + attn(ln_1(x), ln_1_kv(ctx))`` then ``x + mlp(ln_2(x))``, OpenCLIP's
  ``ResidualAttentionBlock(is_cross_attention=True)``, interleaved with causal self-attention blocks in
  CoCa's multimodal decoder.
* :class:`CrossModalBlock`: self-attention, cross-attention, MLP in one pre-LN block (a BERT layer with
  cross-attention, pre-LN like coembed's other blocks): bidirectional over the real tokens in ALBEF's
  fusion encoder (:mod:`coembed.models.fusion`), causal in BLIP's text decoder
  (:mod:`coembed.models.blip_captioner`).
"""

from __future__ import annotations

import torch
from torch import nn

from coembed.layers.attention import Attention
from coembed.layers.mlp import Mlp
from coembed.layers.transformer import mlp_hidden


class AttentionalPooler(nn.Module):
    """``n_queries`` learned queries attend to ``context`` (B, T, context_dim) -> (B, n_queries, width).

    Args:
        width: query and output width.
        context_dim: width of the tokens attended to.
        heads: attention heads.
        n_queries: how many tokens come out.
        eps: LayerNorm epsilon.
    """

    def __init__(self, width: int, context_dim: int, heads: int, n_queries: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, width))
        # torch's layout (packed in_proj_weight, or q/k/v_proj_weight when the widths differ), as OpenCLIP
        self.attn = nn.MultiheadAttention(width, heads, kdim=context_dim, vdim=context_dim, batch_first=True)
        self.ln_q = nn.LayerNorm(width, eps=eps)
        self.ln_k = nn.LayerNorm(context_dim, eps=eps)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        x = self.ln_k(context)
        q = self.ln_q(self.query).to(x.dtype).expand(x.shape[0], -1, -1)  # (B, n_queries, width)
        return self.attn(q, x, x, need_weights=False)[0]


class CrossAttentionBlock(nn.Module):
    """Pre-LN cross-attention block with its own MLP; the context gets its own LayerNorm (``ln_1_kv``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_1_kv = nn.LayerNorm(width, eps=eps)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_hidden(width, mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, width) attends to ``context`` (B, N, width)."""
        x = x + self.attn.cross(self.ln_1(x), self.ln_1_kv(context))
        return x + self.mlp(self.ln_2(x))


class CrossModalBlock(nn.Module):
    """``x + self_attn(ln_1(x))``, ``x + cross_attn(ln_cross(x), context)``, ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_cross = nn.LayerNorm(width, eps=eps)
        self.cross_attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_hidden(width, mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor, *, causal: bool = False, mask: torch.Tensor | None = None,
                probs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Text states ``x`` (B, T, width) reading image tokens ``context`` (B, N, width), all visible.

        Args:
            causal: position i of ``x`` sees positions <= i only (a decoder).
            mask: (B, T) bool, True at the real tokens every position may see (an encoder's padding mask).
            probs: when a list, the cross-attention probabilities (B, heads, T, N) are appended to it.
        """
        if causal and mask is not None:
            raise ValueError("a causal block takes no padding mask (padding sits after the real tokens it cannot see)")
        key_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, T)
        x = x + self.attn(self.ln_1(x), mask=key_mask, causal=causal)
        if probs is None:
            x = x + self.cross_attn.cross(self.ln_cross(x), context)
        else:
            y, p = self.cross_attn.cross_with_probs(self.ln_cross(x), context)
            probs.append(p)
            x = x + y
        return x + self.mlp(self.ln_2(x))


def init_clip_block(block: nn.Module, width: int, layers: int) -> None:
    """CLIP's initialisation of a block with ``attn`` and ``mlp`` (as :meth:`Transformer.init_weights`);
    a CrossModalBlock's ``cross_attn`` gets the ``attn`` scheme too."""
    attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * max(layers, 1)) ** -0.5, (2 * width) ** -0.5
    for attn in (getattr(block, "attn"), getattr(block, "cross_attn", None)):
        if attn is not None:
            nn.init.normal_(attn.in_proj_weight, std=attn_std)
            nn.init.normal_(attn.out_proj.weight, std=proj_std)
    nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
    nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
