"""CoCa (Yu et al., 2022): a contrastive captioner, in OpenCLIP's ``CoCa`` layout.

One model, two objectives on one forward pass:

* contrastive: the ViT's tokens are attention-pooled by one learned query into the image embedding;
  the unimodal text decoder (causal, no image) reads the caption with a learned CLS token appended
  and its final state is the text embedding; CLIP's loss aligns the two;
* captioning: ``caption_queries`` (16 here, 256 in CoCa) other learned queries pool the image into a
  captioning memory; multimodal decoder layers (causal self-attention, then cross-attention to the
  memory, as OpenCLIP's ``MultimodalTransformer``) continue from the unimodal text states, and an LM
  head predicts the next token. CoCa weights the two losses 1 and 2 (:mod:`coembed.objectives.coca`).

The poolers follow the paper (and OpenCLIP's ``attentional_pool="parallel"``): both read the ViT's
tokens after ``ln_post``; the contrastive one is followed by ``image_projection``. Parameter names are
OpenCLIP's (``text.cls_emb``, ``text_decoder.resblocks`` / ``cross_attn`` / ``text_projection``,
``attn_pool`` / ``attn_pool_contrastive``), except that the poolers and ``image_projection`` (OpenCLIP:
``visual.attn_pool*``, ``visual.proj``) sit at the top level because coembed's ViT has no poolers;
tests/models/test_coca.py maps the names and compares a forward with OpenCLIP's own CoCa.

Padding: the unimodal decoder masks padding keys and puts the CLS token at position
``context_length`` whatever the caption's length (OpenCLIP pads every caption to the context length,
so its CLS sits there too), so embeddings and logits of real tokens do not depend on the padding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from coembed.layers.cross_attention import AttentionalPooler, CrossAttentionBlock, init_clip_block
from coembed.layers.transformer import Transformer
from coembed.models.caption_text import CaptionTextConfig
from coembed.towers.text_transformer import trim_padding
from coembed.towers.vit import VisionConfig, VisionTransformer

MAX_LOGIT_SCALE = 100.0


@dataclass(kw_only=True)
class CocaTextConfig(CaptionTextConfig):
    """The text side: ``layers`` unimodal decoder blocks, then ``decoder_layers`` multimodal ones."""

    decoder_layers: int = 2

    _positive = (*CaptionTextConfig._positive, "decoder_layers")


@dataclass(kw_only=True)
class CocaConfig:
    """A CoCa model: image tower, text decoders, the two poolers and the contrastive temperature."""

    embed_dim: int = 128
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: CocaTextConfig = field(default_factory=CocaTextConfig)
    caption_queries: int = 16  # tokens of the captioning memory (CoCa: 256)
    pooler_heads: int = 2
    init_temperature: float = 0.07

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = CocaTextConfig(**self.text)
        for name in ("embed_dim", "caption_queries", "pooler_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for width, name in ((self.embed_dim, "embed_dim"), (self.text.width, "text.width")):
            if width % self.pooler_heads:
                raise ValueError(f"{name} ({width}) must be divisible by pooler_heads ({self.pooler_heads})")
        if self.vision.pool != "tok" or self.vision.patch_dropout:
            raise ValueError("vision.pool must be 'tok' and vision.patch_dropout 0: CoCa pools all ViT tokens itself")
        if not 0.0 < self.init_temperature <= 1.0:
            raise ValueError(f"init_temperature must be in (0, 1], got {self.init_temperature}")

    def to_dict(self) -> dict:
        return {"family": "coca", **asdict(self)}


def _key_mask(tokens: torch.Tensor, pad_id: int, extra: int) -> torch.Tensor:
    """Causal mask that also hides padding keys: (B, T) ids -> (B, 1, T + extra, T + extra) bool, True =
    may attend; the ``extra`` appended positions (the CLS) are real keys."""
    b, t = tokens.shape
    n = t + extra
    real = torch.cat([tokens != pad_id, tokens.new_ones(b, extra, dtype=torch.bool)], dim=1)  # (B, n)
    causal = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril()
    return causal[None, None] & real[:, None, None, :]


class CocaTextEncoder(nn.Module):
    """The unimodal text decoder (OpenCLIP ``TextTransformer`` with ``embed_cls``): causal blocks over the
    caption, a learned CLS token appended, its final state projected into the shared space."""

    def __init__(self, cfg: CocaTextConfig, embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length + 1, cfg.width))  # + the CLS position
        self.cls_emb = nn.Parameter(torch.empty(cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, eps=cfg.ln_eps)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.cls_emb, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.width**-0.5)
        self.transformer.init_weights()

    def _check(self, tokens: torch.Tensor) -> None:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.context_length:
            raise ValueError(f"tokens have length {tokens.shape[1]} > context_length {self.cfg.context_length}")

    def token_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """Causal states of the caption tokens, before ``ln_final`` (what the multimodal decoder reads):
        (B, T) -> (B, T, width). Without the CLS: no caption token attends to it."""
        self._check(tokens)
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        return self.transformer(x, causal=True)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> text embedding (B, embed_dim) and token states (B, T, width) before ``ln_final``."""
        self._check(tokens)
        t = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:t]  # (B, T, width)
        cls = (self.cls_emb + self.positional_embedding[self.cfg.context_length]).to(x.dtype)
        x = torch.cat([x, cls.expand(x.shape[0], 1, -1)], dim=1)  # (B, T + 1, width)
        x = self.transformer(x, mask=_key_mask(tokens, self.cfg.pad_id, 1))
        return self.ln_final(x[:, -1]) @ self.text_projection, x[:, :-1]


class MultimodalDecoder(nn.Module):
    """OpenCLIP's ``MultimodalTransformer``: per layer a causal self-attention block then a cross-attention
    block reading the image memory; ``ln_final`` and the LM projection ``text_projection`` (no bias)."""

    def __init__(self, cfg: CocaTextConfig) -> None:
        super().__init__()
        self.resblocks = Transformer(cfg.width, cfg.decoder_layers, cfg.heads, cfg.mlp_ratio, eps=cfg.ln_eps).resblocks
        self.cross_attn = nn.ModuleList(CrossAttentionBlock(cfg.width, cfg.heads, cfg.mlp_ratio, eps=cfg.ln_eps)
                                        for _ in range(cfg.decoder_layers))
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.vocab_size))
        for block in [*self.resblocks, *self.cross_attn]:
            init_clip_block(block, cfg.width, cfg.decoder_layers)
        nn.init.normal_(self.text_projection, std=cfg.width**-0.5)

    def forward(self, memory: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Image memory (B, M, width) and unimodal token states (B, T, width) -> logits (B, T, vocab)."""
        x = states
        for self_block, cross_block in zip(self.resblocks, self.cross_attn):
            x = cross_block(self_block(x, causal=True), memory)
        return self.ln_final(x) @ self.text_projection


class Coca(nn.Module):
    """CoCa: ``visual`` (ViT, all tokens), ``attn_pool_contrastive`` + ``image_projection`` (image
    embedding), ``attn_pool`` (captioning memory), ``text`` (unimodal decoder), ``text_decoder``
    (multimodal decoder and LM head), ``logit_scale``.

    Args:
        cfg: model configuration.
    """

    config_class = CocaConfig

    def __init__(self, cfg: CocaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_cfg = cfg.text
        v, t = cfg.vision, cfg.text
        # no projection on the ViT: the contrastive pooler's output is projected (image_projection)
        self.visual = VisionTransformer(replace(v, proj=False), v.width)
        self.attn_pool_contrastive = AttentionalPooler(cfg.embed_dim, v.width, cfg.pooler_heads, 1, eps=v.ln_eps)
        self.image_projection = nn.Parameter(cfg.embed_dim**-0.5 * torch.randn(cfg.embed_dim, cfg.embed_dim))
        self.attn_pool = AttentionalPooler(t.width, v.width, cfg.pooler_heads, cfg.caption_queries, eps=v.ln_eps)
        self.text = CocaTextEncoder(t, cfg.embed_dim)
        self.text_decoder = MultimodalDecoder(t)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))

    # -- image ---------------------------------------------------------------------------------
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All ViT tokens after ``ln_post``: (B, 3, H, W) -> (B, 1 + grid*grid, vision width)."""
        return self.visual.forward_features(images)

    def image_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """ViT tokens -> (B, embed_dim) unnormalised image embedding (one-query pooling, projection)."""
        return self.attn_pool_contrastive(tokens)[:, 0] @ self.image_projection

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim) contrastive image embeddings."""
        x = self.image_embedding(self.image_tokens(images))
        return F.normalize(x, dim=-1) if normalize else x

    def caption_memory(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, caption_queries, text width): what the multimodal decoder attends to."""
        return self.attn_pool(self.image_tokens(images))

    # -- text ----------------------------------------------------------------------------------
    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, T) ids -> (B, embed_dim) contrastive text embeddings (trailing padding trimmed first)."""
        x = self.text(trim_padding(tokens, self.cfg.text.pad_id))[0]
        return F.normalize(x, dim=-1) if normalize else x

    def temperature(self) -> torch.Tensor:
        """The contrastive logit multiplier ``exp(logit_scale)``, clamped at 100."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    # -- captioning ----------------------------------------------------------------------------
    def decode(self, memory: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """The multimodal decoder over given unimodal states: -> (B, T, vocab) next-token logits."""
        if memory.shape[0] != states.shape[0]:
            raise ValueError(f"memory and text states must have the same batch size, got {memory.shape[0]} and {states.shape[0]}")
        return self.text_decoder(memory, states)

    def caption_logits(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, vocab) of captions ``tokens`` (B, T) given :meth:`caption_memory`;
        position ``t`` predicts token ``t + 1`` and sees tokens ``<= t`` only."""
        return self.decode(memory, self.text.token_states(tokens))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Caption logits of ``tokens`` for ``images``, as :meth:`caption_logits`."""
        return self.caption_logits(self.caption_memory(images), tokens)

    def no_weight_decay(self) -> set[str]:
        """Gains, biases, embeddings, queries, the CLS token and the temperature: not decayed."""
        skip = ("embedding", "cls_emb", "query")
        return {name for name, p in self.named_parameters()
                if p.ndim < 2 or name == "logit_scale" or any(s in name for s in skip)}
