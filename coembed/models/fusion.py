"""ALBEF / BLIP-style fusion encoder: a ViT, a bidirectional text encoder whose top layers cross-attend
to the image tokens, and the heads of the three objectives (ITC, ITM, MLM).

Reads top-down from the blocks to the model. The text side is split as in ALBEF (BERT's 6 + 6 layers):
``text`` holds the embeddings and the text-only layers (the unimodal encoder that ITC uses), ``fusion``
the layers that add cross-attention to the image tokens (the multimodal encoder of ITM and MLM).
Blocks are pre-LayerNorm (coembed's :class:`~coembed.layers.transformer.ResidualAttentionBlock`); padding
keys are masked out, so a real token's state does not depend on the padding a batch carries.

Momentum (EMA) copies of the unimodal encoders and projections (``visual_m``, ``text_m``,
``text_proj_m``) and the feature queues are parameters / buffers of the model, so they are saved in
``model.safetensors`` with the weights and a resumed run continues them exactly.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from coembed.layers.attention import Attention
from coembed.layers.mlp import Mlp
from coembed.layers.transformer import Transformer, mlp_hidden
from coembed.towers.text_transformer import trim_padding
from coembed.towers.vit import VisionConfig, VisionTransformer

MAX_LOGIT_SCALE = 100.0


@dataclass(kw_only=True)
class FusionTextConfig:
    """The text side: ``layers`` text-only blocks, then ``fusion_layers`` blocks with cross-attention."""

    vocab_size: int = 1024
    context_length: int = 48
    width: int = 128
    heads: int = 2
    layers: int = 2
    fusion_layers: int = 2
    mlp_ratio: float = 4.0
    pad_id: int = 0
    eot_id: int = 2
    mask_id: int = 4
    special_ids: tuple[int, ...] = (0, 1, 2, 3, 4)  # never masked nor drawn by MLM (pad, sot, eot, unk, mask)
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.special_ids = tuple(int(i) for i in self.special_ids)
        for name in ("vocab_size", "context_length", "width", "heads", "fusion_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"text.{name} must be positive, got {getattr(self, name)}")
        if self.layers < 0:
            raise ValueError(f"text.layers must be >= 0, got {self.layers}")
        if self.width % self.heads:
            raise ValueError(f"text.width ({self.width}) must be divisible by text.heads ({self.heads})")
        if not self.mlp_ratio > 0:
            raise ValueError(f"text.mlp_ratio must be positive, got {self.mlp_ratio}")
        for name in ("pad_id", "eot_id", "mask_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"text.{name} must be in [0, vocab_size={self.vocab_size}), got {getattr(self, name)}")


@dataclass(kw_only=True)
class FusionConfig:
    """An ALBEF-style fusion model: towers, shared ITC space, momentum and queue settings."""

    embed_dim: int = 128
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: FusionTextConfig = field(default_factory=FusionTextConfig)
    init_temperature: float = 0.07  # ALBEF's initial ITC temperature (learned; logit multiplier <= 100)
    momentum: float = 0.995  # EMA coefficient of the momentum encoders
    queue_size: int = 4096  # momentum features kept as extra ITC candidates
    alpha: float = 0.4  # weight of the momentum-distillation targets once ramped up
    alpha_ramp: float = 1.0  # share of training (``progress``) over which alpha ramps linearly from 0

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = FusionTextConfig(**self.text)
        if self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")
        if not self.vision.class_token or self.vision.pool != "tok" or not self.vision.proj:
            raise ValueError("vision must use its class token with a projection (class_token, pool 'tok', proj) for ITC")
        if not 0.0 < self.init_temperature <= 1.0:
            raise ValueError(f"init_temperature must be in (0, 1], got {self.init_temperature}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {self.queue_size}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 < self.alpha_ramp <= 1.0:
            raise ValueError(f"alpha_ramp must be in (0, 1], got {self.alpha_ramp}")

    def to_dict(self) -> dict:
        return {"family": "albef", **asdict(self)}


# ----------------------------------------------------------------------------- blocks
def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, T) token ids -> (B, T) bool, True at real tokens."""
    return tokens != pad_id


def _attn_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask[:, None, None, :]  # (B, 1, 1, T): which keys every query may see


class FusionBlock(nn.Module):
    """Pre-LN block with cross-attention: ``x + self_attn``, ``x + cross_attn(image)``, ``x + mlp``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_cross = nn.LayerNorm(width, eps=eps)
        self.cross_attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp_hidden(width, mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
                probs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``x`` (B, T, W) text states, ``mask`` (B, T), ``image`` (B, N, W); appends the cross-attention
        probabilities (B, heads, T, N) to ``probs`` when a list is given."""
        x = x + self.attn(self.ln_1(x), mask=_attn_mask(mask))
        if probs is None:
            x = x + self.cross_attn.cross(self.ln_cross(x), image)
        else:
            y, p = self.cross_attn.cross_with_probs(self.ln_cross(x), image)
            probs.append(p)
            x = x + y
        return x + self.mlp(self.ln_2(x))


class TextEncoder(nn.Module):
    """Token + position embeddings and the text-only bidirectional blocks (the unimodal text encoder)."""

    def __init__(self, cfg: FusionTextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, eps=cfg.ln_eps)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> states (B, T', W) and mask (B, T'); columns of padding only are trimmed."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
        tokens = trim_padding(tokens, self.cfg.pad_id)
        if tokens.shape[1] > self.cfg.context_length:
            raise ValueError(f"tokens have length {tokens.shape[1]} > context_length {self.cfg.context_length}")
        mask = padding_mask(tokens, self.cfg.pad_id)
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        return self.ln_final(self.transformer(x, mask=_attn_mask(mask))), mask


class FusionEncoder(nn.Module):
    """The multimodal layers: text states cross-attending to image tokens."""

    def __init__(self, cfg: FusionTextConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(FusionBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.ln_eps) for _ in range(cfg.fusion_layers))
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
                probs: list[torch.Tensor] | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask, image, probs)
        return self.ln_final(x)


class MlmHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then the decoder tied to the word embeddings."""

    def __init__(self, width: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.ln = nn.LayerNorm(width, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, T, W) fused states -> (B, T, vocab) logits."""
        return F.linear(self.ln(F.gelu(self.dense(x))), word_embeddings, self.bias)


# ----------------------------------------------------------------------------- model
class FusionModel(nn.Module):
    """ALBEF: image tower, text encoder, fusion encoder, ITC projections, ITM and MLM heads, momentum
    copies and feature queues.

    Args:
        cfg: model configuration.
    """

    config_class = FusionConfig

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_cfg = cfg.text
        width = cfg.text.width
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim)
        self.image_to_text = nn.Linear(cfg.vision.width, width) if cfg.vision.width != width else nn.Identity()
        self.text = TextEncoder(cfg.text)
        self.fusion = FusionEncoder(cfg.text)
        self.text_proj = nn.Linear(width, cfg.embed_dim)
        self.itm_head = nn.Linear(width, 2)
        self.mlm_head = MlmHead(width, cfg.text.vocab_size, cfg.text.ln_eps)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        self.visual_m = _frozen_copy(self.visual)
        self.text_m = _frozen_copy(self.text)
        self.text_proj_m = _frozen_copy(self.text_proj)
        self._build_queues(cfg.queue_size, cfg.embed_dim)

    def _build_queues(self, size: int, dim: int) -> None:
        self.register_buffer("image_queue", torch.zeros(size, dim))
        self.register_buffer("text_queue", torch.zeros(size, dim))
        self.register_buffer("idx_queue", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next row to overwrite
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # rows filled so far

    # -- unimodal encoders (ITC) ------------------------------------------------------------
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All ViT output tokens (B, 1 + grid*grid, vision width); token 0 is the class token."""
        return self.visual.forward_features(images)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim) ITC image embeddings."""
        x = self.visual.forward_head(self.image_tokens(images))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-only encoding: (B, T) ids -> states (B, T', width) and padding mask (B, T'), True at real
        tokens (trailing all-padding columns are trimmed)."""
        return self.text(tokens)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, T) ids -> (B, embed_dim) ITC text embeddings, from the first ([CLS]/start) token."""
        x = self.text_proj(self.encode_text_tokens(tokens)[0][:, 0])
        return F.normalize(x, dim=-1) if normalize else x

    def temperature(self) -> torch.Tensor:
        """The ITC logit multiplier ``exp(logit_scale)`` (1 / temperature), clamped at 100."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    # -- multimodal encoder (ITM, MLM) -------------------------------------------------------
    def fuse(self, text_hidden: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor,
             probs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The fusion layers over given text states: (B, T, W), mask (B, T), image tokens (B, N, vision
        width) -> fused states (B, T, W); cross-attention maps are appended to ``probs`` if a list."""
        if text_hidden.shape[0] != image_tokens.shape[0]:
            raise ValueError(f"text_hidden and image_tokens must have the same batch size, got "
                             f"{text_hidden.shape[0]} and {image_tokens.shape[0]}")
        return self.fusion(text_hidden, text_mask, self.image_to_text(image_tokens), probs)

    def itm_head_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, T, W) fused states -> (B, 2) not-matched / matched logits from the first token."""
        return self.itm_head(fused[:, 0])

    def mlm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, T, W) fused states -> (B, T, vocab) masked-token logits."""
        return self.mlm_head(fused, self.text.token_embedding.weight)

    def itm_logits(self, images: torch.Tensor, tokens: torch.Tensor, *,
                   return_cross_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """ITM logits ``(B, 2)`` (index 1 = matched) of the pairs (image i, text i).

        With ``return_cross_attention`` also the cross-attention probabilities of every fusion layer,
        each ``(B, heads, T_text, T_image)``, kept in the autograd graph (for Grad-CAM); ``T_text`` is
        the length after trimming trailing padding, ``T_image`` = 1 + grid*grid (class token first).
        """
        hidden, mask = self.encode_text_tokens(tokens)
        probs: list[torch.Tensor] | None = [] if return_cross_attention else None
        logits = self.itm_head_logits(self.fuse(hidden, mask, self.image_tokens(images), probs))
        return (logits, probs) if return_cross_attention else logits

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """ITM logits of the pairs, as :meth:`itm_logits`."""
        return self.itm_logits(images, tokens)

    # -- momentum model and queues ----------------------------------------------------------
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.visual, self.visual_m), (self.text, self.text_m), (self.text_proj, self.text_proj_m)]

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``p_m = m * p_m + (1 - m) * p`` for every momentum parameter (ALBEF's ``_momentum_update``)."""
        m = self.cfg.momentum
        for online, ema in self.momentum_pairs():
            for p, p_m in zip(online.parameters(), ema.parameters()):
                p_m.mul_(m).add_(p.detach(), alpha=1 - m)

    @torch.no_grad()
    def momentum_features(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ITC embeddings (B, embed_dim) of the momentum encoders."""
        image = self.visual_m(images)
        text = self.text_proj_m(self.text_m(tokens)[0][:, 0])
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1)

    def queue(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The filled part of the queues: image (Q, D), text (Q, D) features and image ids (Q,)."""
        n = int(self.queue_count)
        return self.image_queue[:n], self.text_queue[:n], self.idx_queue[:n]

    @torch.no_grad()
    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, image_ids: torch.Tensor) -> None:
        """Write a batch of momentum features (and their image ids) over the oldest queue rows."""
        size = self.cfg.queue_size
        if size == 0:
            return
        image_feat, text_feat, image_ids = image_feat[-size:], text_feat[-size:], image_ids[-size:]
        rows = (int(self.queue_ptr) + torch.arange(image_feat.shape[0], device=image_feat.device)) % size
        self.image_queue[rows] = image_feat.to(self.image_queue.dtype)
        self.text_queue[rows] = text_feat.to(self.text_queue.dtype)
        self.idx_queue[rows] = image_ids.to(self.idx_queue.device, torch.long)
        self.queue_ptr.fill_((int(self.queue_ptr) + image_feat.shape[0]) % size)
        self.queue_count.fill_(min(size, int(self.queue_count) + image_feat.shape[0]))

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW must not decay: gains, biases, embeddings and the temperature."""
        return {name for name, p in self.named_parameters()
                if p.ndim < 2 or "embedding" in name or name == "logit_scale"}


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A copy with the same weights that the optimizer never sees (it follows by EMA)."""
    ema = copy.deepcopy(module)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema
