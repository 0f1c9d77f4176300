"""Flamingo (Alayrac et al., 2022), following open_flamingo's ``helpers.py``: a Perceiver Resampler and
gated cross-attention dense blocks inserted into a frozen language model.

- The Perceiver Resampler turns the frozen ViT's tokens (the "media") into ``num_latents`` tokens:
  learned latents attend to concat(media, latents) (keys and values from both, Flamingo's choice), with
  LayerNorms on media and latents, then a feed-forward; residual on the latents; a final LayerNorm.
- A gated cross-attention dense block before every ``cross_every``-th LM block (before blocks
  ``k-1, 2k-1, ...``, as open_flamingo's ``(idx + 1) % k == 0``): ``x = x + tanh(attn_gate) *
  cross_attn(ln(x), latents)``, then ``x = x + tanh(ff_gate) * ff(x)``. Both gates start at 0, so at
  initialisation the LM computes exactly what it computes alone (tested with ``torch.equal``).
- Each caption follows its one image, so every text token attends to that image's latents (open_flamingo's
  media-location masking reduces to this for one image per text).

coembed's attention layer projects queries, keys and values from one width; the latents are mapped once
to the LM's width (``media_proj``) where open_flamingo's ``to_kv`` maps the visual width to the heads'.
Trainable: the resampler, ``media_proj`` and the gated blocks; the ViT and the LM are frozen.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from coembed.layers.attention import Attention
from coembed.layers.mlp import Mlp
from coembed.layers.transformer import mlp_hidden
from coembed.models.bridging import Bridge, check_bridge, check_bridge_task, pretrained_tokenizer
from coembed.models.causal_lm import LMConfig
from coembed.towers.vit import VisionConfig


@dataclass(kw_only=True)
class FlamingoConfig:
    """A Flamingo bridge: frozen ViT, Perceiver Resampler, gated cross-attention into a frozen LM."""

    vision: VisionConfig | None = None  # None: read from vision_path (or `tiny`'s tower without one)
    vision_path: str = ""
    lm: LMConfig = field(default_factory=LMConfig)
    context_length: int = 48
    num_latents: int = 16
    resampler_layers: int = 2
    resampler_heads: int = 2
    cross_every: int = 1  # a gated block before every k-th LM block
    cross_heads: int = 2
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        check_bridge(self)
        for name in ("num_latents", "resampler_layers", "resampler_heads", "cross_every", "cross_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.vision.width % self.resampler_heads:
            raise ValueError(f"vision.width ({self.vision.width}) must be divisible by resampler_heads ({self.resampler_heads})")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")

    def pretrained_tokenizer(self):
        return pretrained_tokenizer(self)

    def check_task(self, task: str) -> None:
        """Captioning, or VQA with a coembed LM (:func:`~coembed.models.bridging.check_bridge_task`)."""
        check_bridge_task(self, task)

    def to_dict(self) -> dict:
        return {"family": "flamingo", **asdict(self)}


class FeedForward(nn.Module):
    """open_flamingo's ``FeedForward``: LayerNorm then the MLP (no residual: the caller adds it)."""

    def __init__(self, width: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.mlp = Mlp(width, mlp_hidden(width, mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln(x))


class PerceiverAttention(nn.Module):
    """Latents attend to concat(media, latents), each normalised first."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm_media = nn.LayerNorm(width)
        self.norm_latents = nn.LayerNorm(width)
        self.attn = Attention(width, heads)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """media (B, N, W), latents (B, L, W) -> (B, L, W)."""
        latents = self.norm_latents(latents)
        context = torch.cat([self.norm_media(media), latents], dim=1)  # (B, N + L, W)
        return self.attn.cross(latents, context)


class PerceiverResampler(nn.Module):
    """``num_latents`` learned latents, refined by ``layers`` x (attention to media + latents, feed-forward)."""

    def __init__(self, width: int, layers: int, heads: int, num_latents: int, mlp_ratio: float) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, width))
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(width, heads), FeedForward(width, mlp_ratio)]) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, media: torch.Tensor) -> torch.Tensor:
        """(B, N, W) media tokens -> (B, num_latents, W)."""
        x = self.latents.to(media.dtype).expand(media.shape[0], -1, -1)  # (B, L, W)
        for attn, ff in self.layers:
            x = attn(media, x) + x
            x = ff(x) + x
        return self.norm(x)


class GatedCrossAttentionBlock(nn.Module):
    """Tanh-gated cross-attention to the latents and tanh-gated feed-forward, both gates 0 at init."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = FeedForward(width, mlp_ratio)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        """x (B, T, W) LM states, media (B, L, W) latents at the LM's width -> (B, T, W)."""
        x = self.attn.cross(self.ln(x), media) * self.attn_gate.tanh().to(x.dtype) + x
        return self.ff(x) * self.ff_gate.tanh().to(x.dtype) + x


class Flamingo(Bridge):
    """Frozen ViT -> Perceiver Resampler -> gated cross-attention inside the frozen LM.

    Args:
        cfg: model configuration.
    """

    config_class = FlamingoConfig

    def __init__(self, cfg: FlamingoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._build_towers(cfg)
        vision_width, width = cfg.vision.width, self.lm.width
        self.perceiver = PerceiverResampler(vision_width, cfg.resampler_layers, cfg.resampler_heads, cfg.num_latents, cfg.mlp_ratio)
        self.media_proj = nn.Linear(vision_width, width)
        blocks = len(self.lm.decoder_layers())
        # gated block j sits before LM block k*(j+1) - 1
        self.gated_cross_attn = nn.ModuleList(GatedCrossAttentionBlock(width, cfg.cross_heads, cfg.mlp_ratio)
                                              for _ in range(blocks // cfg.cross_every))
        if not len(self.gated_cross_attn):
            raise ValueError(f"cross_every ({cfg.cross_every}) is larger than the LM's {blocks} blocks: no gated block")
        self.check_length(0)

    def caption_memory(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_latents, LM width): the resampled image the text cross-attends to."""
        return self.media_proj(self.perceiver(self.image_tokens(images)))

    def _before_block(self, memory: torch.Tensor):
        k = self.cfg.cross_every

        def before(i: int, x: torch.Tensor) -> torch.Tensor:
            if (i + 1) % k:
                return x
            return self.gated_cross_attn[(i + 1) // k - 1](x, memory.to(x.dtype))

        return before

    def caption_logits(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) caption ids -> (B, T, vocab) next-token logits, the LM cross-attending to ``memory``."""
        mask = tokens != self.pad_id
        return self.lm.forward_embeds(self.lm.embed_tokens(tokens), mask, before_block=self._before_block(memory))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Caption logits (B, T, vocab) of ``tokens`` given ``images``."""
        return self.caption_logits(self.caption_memory(images), tokens)
