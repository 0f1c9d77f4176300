"""BLIP's image-grounded text decoder (Li et al., 2022) as a captioner: a ViT and a causal text decoder
whose every block cross-attends to ALL the image tokens.

BLIP's decoder is BERT with causal self-attention and a cross-attention layer per block, started by a
``[DEC]`` token and trained by language modelling with label smoothing 0.1
(:mod:`coembed.objectives.blip`). Here the blocks are coembed's pre-LN
:class:`~coembed.layers.cross_attention.CrossModalBlock` (BERT is post-LN), ``<sot>`` plays ``[DEC]``,
and the LM head is BERT's prediction head (dense, GELU, LayerNorm, then the vocabulary projection),
whose projection is **tied** to the input word embeddings by default, as BLIP's decoder ties them
(``text.tie_embeddings=false`` gives it its own matrix). The image tokens (class token and patches,
after ``ln_post``) are mapped to the text width by ``image_to_text`` when the widths differ, which BLIP's
cross-attention does inside its key/value projections.

The ITC/ITM encoders BLIP pre-trains next to this decoder are ALBEF's (:mod:`coembed.models.fusion`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from coembed.layers.cross_attention import CrossModalBlock, init_clip_block
from coembed.models.caption_text import CaptionTextConfig
from coembed.models.fusion import MlmHead
from coembed.towers.vit import VisionConfig, VisionTransformer


@dataclass(kw_only=True)
class BlipTextConfig(CaptionTextConfig):
    """The text decoder's shape, token ids (``sot_id`` is BLIP's [DEC], the first token of every caption) and head."""

    layers: int = 4
    tie_embeddings: bool = True  # the LM head's projection is the word-embedding matrix (BLIP, BERT)


@dataclass(kw_only=True)
class BlipCaptionerConfig:
    """A BLIP captioner: image tower, text decoder, and the label smoothing of its loss."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: BlipTextConfig = field(default_factory=BlipTextConfig)
    label_smoothing: float = 0.1  # BLIP's language-modelling loss

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = BlipTextConfig(**self.text)
        if self.vision.patch_dropout:
            raise ValueError("vision.patch_dropout must be 0: the decoder attends to every image token")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def to_dict(self) -> dict:
        return {"family": "blip", **asdict(self)}


class BlipTextDecoder(nn.Module):
    """Word + position embeddings, :class:`CrossModalBlock` s (causal), ``ln_final`` and the LM head."""

    def __init__(self, cfg: BlipTextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.blocks = nn.ModuleList(CrossModalBlock(cfg.width, cfg.heads, cfg.mlp_ratio, eps=cfg.ln_eps) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.lm_head = MlmHead(cfg.width, cfg.vocab_size, cfg.ln_eps)
        self.lm_weight = None if cfg.tie_embeddings else nn.Parameter(0.02 * torch.randn(cfg.vocab_size, cfg.width))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for block in self.blocks:
            init_clip_block(block, cfg.width, cfg.layers)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and image tokens (B, N, width) -> (B, T, vocab) next-token logits."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.context_length:
            raise ValueError(f"tokens have length {tokens.shape[1]} > context_length {self.cfg.context_length}")
        if image.shape[0] != tokens.shape[0]:
            raise ValueError(f"image tokens and captions must have the same batch size, got {image.shape[0]} and {tokens.shape[0]}")
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]  # (B, T, width)
        for block in self.blocks:
            x = block(x, image, causal=True)
        weight = self.token_embedding.weight if self.lm_weight is None else self.lm_weight
        return self.lm_head(self.ln_final(x), weight)


class BlipCaptioner(nn.Module):
    """BLIP's captioner: ``visual`` (ViT, all tokens), ``image_to_text``, ``text_decoder``.

    Args:
        cfg: model configuration.
    """

    config_class = BlipCaptionerConfig

    def __init__(self, cfg: BlipCaptionerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_cfg = cfg.text
        v, width = cfg.vision, cfg.text.width
        self.visual = VisionTransformer(replace(v, proj=False), v.width)  # no pooling is used: no projection
        self.image_to_text = nn.Linear(v.width, width) if v.width != width else nn.Identity()
        self.text_decoder = BlipTextDecoder(cfg.text)

    def caption_memory(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + grid*grid, text width): every ViT token, at the decoder's width."""
        return self.image_to_text(self.visual.forward_features(images))

    def caption_logits(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, vocab) of captions ``tokens`` (B, T) given :meth:`caption_memory`;
        position ``t`` predicts token ``t + 1`` and sees tokens ``<= t`` only."""
        return self.text_decoder(tokens, memory)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Caption logits of ``tokens`` for ``images``, as :meth:`caption_logits`."""
        return self.caption_logits(self.caption_memory(images), tokens)

    def no_weight_decay(self) -> set[str]:
        """Gains, biases and embeddings: not decayed."""
        return {name for name, p in self.named_parameters() if p.ndim < 2 or "embedding" in name}
