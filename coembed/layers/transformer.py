"""Pre-LayerNorm Transformer encoder: the block stack shared by the image and text towers.

Layout follows OpenCLIP's ``Transformer`` (``resblocks.N.ln_1 / attn / ln_2 / mlp``).
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from coembed.layers.attention import Attention
from coembed.layers.mlp import Mlp


def mlp_hidden(width: int, mlp_ratio: float) -> int:
    """Hidden width of the MLP: ``int(width * mlp_ratio)``, except that a product within 1e-6 of a
    whole number is that number, so a ratio read from a foreign config (4304 / 1152) comes back whole."""
    hidden = width * mlp_ratio
    return round(hidden) if abs(hidden - round(hidden)) < 1e-6 else int(hidden)


def check_text_shape(cfg, positive: tuple[str, ...], ids: tuple[str, ...], prefix: str = "text.") -> None:
    """The checks every text section's shape shares, ValueError naming the field (``prefix`` + name):
    the ``positive`` fields ints > 0, ``context_length`` >= 2, ``width`` divisible by ``heads``,
    ``mlp_ratio`` > 0, and each of ``ids`` a token id below ``vocab_size``."""
    for name in positive:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{prefix}{name} must be a positive int, got {value!r}")
    if cfg.context_length < 2:
        raise ValueError(f"{prefix}context_length must be >= 2 (room for <sot> and <eot>), got {cfg.context_length}")
    if cfg.width % cfg.heads:
        raise ValueError(f"{prefix}width ({cfg.width}) must be divisible by {prefix}heads ({cfg.heads})")
    if not cfg.mlp_ratio > 0:
        raise ValueError(f"{prefix}mlp_ratio must be positive, got {cfg.mlp_ratio}")
    for name in ids:
        if not 0 <= getattr(cfg, name) < cfg.vocab_size:
            raise ValueError(f"{prefix}{name} must be in [0, vocab_size={cfg.vocab_size}), got {getattr(cfg, name)}")


class ResidualAttentionBlock(nn.Module):
    """``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, *, quick_gelu: bool = False, act: str | None = None,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_hidden(width, mlp_ratio), quick_gelu=quick_gelu, act=act)

    def forward(self, x: torch.Tensor, *, causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal, mask=mask)
        return x + self.mlp(self.ln_2(x))

    def forward_first(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s output at token 0 only, (B, T, width) -> (B, 1, width), bidirectional:
        token 0 still attends to every token, but no other token's output is computed."""
        h = self.ln_1(x)
        y = x[:, :1] + self.attn.cross(h[:, :1], h)
        return y + self.mlp(self.ln_2(y))


class Transformer(nn.Module):
    """A stack of :class:`ResidualAttentionBlock` over batch-first sequences (B, T, width)."""

    def __init__(
        self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, *, quick_gelu: bool = False,
        act: str | None = None, eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, quick_gelu=quick_gelu, act=act, eps=eps)
            for _ in range(layers)
        )
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, *, causal: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, 1, 1, T), True where a key may be attended (see :meth:`Attention.forward`)."""
        for block in self.resblocks:
            x = self._block(block, x, causal=causal, mask=mask)
        return x

    def forward_first(self, x: torch.Tensor) -> torch.Tensor:
        """The bidirectional :meth:`forward`'s output at token 0 only: (B, T, width) -> (B, 1, width).
        For class-token pooling: the last block computes the class token alone (its attention query
        and MLP on one token instead of T), the same numbers as ``forward(x)[:, :1]``."""
        *body, last = self.resblocks
        for block in body:
            x = self._block(block, x)
        return last.forward_first(x)

    def _block(self, block: ResidualAttentionBlock, x: torch.Tensor, **kw) -> torch.Tensor:
        if self.grad_checkpointing and self.training:
            return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False, **kw)
        return block(x, **kw)

    def init_weights(self) -> None:
        """CLIP's initialisation: std scaled by width and depth so the residual stream stays O(1)."""
        layers = len(self.resblocks)
        attn_std = self.width**-0.5
        proj_std = self.width**-0.5 * (2 * max(layers, 1)) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
