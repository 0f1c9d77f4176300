"""Causal Transformer text tower in the OpenAI CLIP layout.

Tokens -> token + learned position embeddings -> causal pre-LN Transformer -> ln_final ->
the end-of-text token's state -> linear projection into the shared space.

:class:`TextTower` holds the parameters at its top level (``token_embedding``, ``transformer``,
``ln_final``, ``text_projection``...), which is how OpenAI/OpenCLIP ``CLIP`` state dicts name them,
so :class:`coembed.models.dual_encoder.DualEncoder` inherits from it instead of nesting it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from coembed.layers.transformer import Transformer, check_text_shape

POOL_TYPES = ("eot", "argmax", "last")


@dataclass(kw_only=True)
class TextConfig:
    """Shape of the causal text tower and the token ids it relies on."""

    vocab_size: int = 4096
    context_length: int = 64
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    pad_id: int = 0
    eot_id: int = 2
    # "eot": first position holding eot_id; "argmax": position of the largest id (OpenAI's CLIP
    # vocabulary puts end-of-text last, so the two agree there); "last": the last position (SigLIP,
    # whose tokenizer pads every row to context_length).
    pool_type: str = "eot"
    causal: bool = True  # False: bidirectional attention over every position, padding included (SigLIP)
    proj_bias: bool = False  # True: text_projection is an nn.Linear with a bias (SigLIP's head)
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_text_shape(self, ("vocab_size", "context_length", "width", "layers", "heads"), ())
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"text.pool_type must be one of {POOL_TYPES}, got {self.pool_type!r}")


def trim_padding(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop trailing columns that are padding in every row: (B, T) -> (B, T') with T' <= T.

    With a causal mask no position attends to later ones, so removing trailing padding leaves every
    remaining position's output unchanged while saving the work on the padded columns. While a graph
    is being traced (ONNX export) nothing is trimmed: the length found here would be frozen into the
    graph, and the runtime trims the ids before each call instead.
    """
    if torch.jit.is_tracing():
        return tokens
    used = (tokens != pad_id).any(dim=0).nonzero()
    length = int(used.max()) + 1 if used.numel() else 1
    return tokens[:, :length]


class TextTower(nn.Module):
    """Causal text encoder with OpenAI-CLIP parameter names at the top level."""

    def _build_text(self, cfg: TextConfig, output_dim: int, *, quick_gelu: bool = False, act: str | None = None) -> None:
        self.text_cfg = cfg
        act = act or ("quick_gelu" if quick_gelu else "gelu")
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, act=act, eps=cfg.ln_eps)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        if cfg.proj_bias:
            self.text_projection = nn.Linear(cfg.width, output_dim)
            nn.init.zeros_(self.text_projection.bias)
        else:
            self.text_projection = nn.Parameter(torch.empty(cfg.width, output_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        weight = self.text_projection.weight if cfg.proj_bias else self.text_projection
        nn.init.normal_(weight, std=cfg.width**-0.5)
        self.transformer.init_weights()

    def pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of the end-of-text token in each row: (B, T) -> (B,)."""
        if self.text_cfg.pool_type == "last":
            return torch.full(tokens.shape[:1], tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)
        if self.text_cfg.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        is_eot = tokens == self.text_cfg.eot_id
        # Rows without an end token (truncated by a foreign tokenizer) pool their last non-pad
        # token; the last *column* could be padding and would make the result depend on the batch.
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        last = torch.where(tokens != self.text_cfg.pad_id, positions, 0).amax(dim=-1)
        return torch.where(is_eot.any(dim=-1), is_eot.int().argmax(dim=-1), last)

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """All token states after ``ln_final``: (B, T) -> (B, T', width), trailing padding trimmed
        (causal towers only: a bidirectional tower's padding changes every state)."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
        if self.text_cfg.causal:
            tokens = trim_padding(tokens, self.text_cfg.pad_id)
        if tokens.shape[1] > self.text_cfg.context_length:
            raise ValueError(
                f"tokens have length {tokens.shape[1]} > context_length {self.text_cfg.context_length}"
            )
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.transformer(x, causal=self.text_cfg.causal)  # (B, T', width)
        return self.ln_final(x)

    def text_head(self, tokens: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Pool the end-of-text state and project: -> (B, output_dim)."""
        tokens = tokens[:, : states.shape[1]]
        pooled = states[torch.arange(states.shape[0], device=states.device), self.pool_index(tokens)]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection


class TextTransformer(TextTower):
    """Stand-alone text tower (used where the text encoder is not merged into a CLIP layout)."""

    def __init__(self, cfg: TextConfig, output_dim: int, *, quick_gelu: bool = False, act: str | None = None) -> None:
        super().__init__()
        self._build_text(cfg, output_dim, quick_gelu=quick_gelu, act=act)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_head(tokens, self.text_features(tokens))
