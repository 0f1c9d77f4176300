"""ViLT-style single-stream vision-language encoder (Kim et al., 2021).

Words and image patches become tokens of one width (word + position embeddings; linear patch
projection + [image CLS] + position embeddings), each gets a modality-type embedding, and the
concatenation (text first, then the image) runs through one pre-LN Transformer in which every token
attends to every real token (padding is masked out of the keys, so padding does not change any
output). Heads: image-text matching on the first token (the text's ``<sot>``, ViLT's [CLS]) and
masked language modelling tied to the word embeddings. There is no separate image or text encoder,
so a retrieval score of a pair needs one pass of the joint sequence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from coembed.layers.transformer import Transformer
from coembed.layers.vl_embed import JointEmbedding, check_stem
from coembed.layers.vl_heads import ItmHead, MlmHead


@dataclass(kw_only=True)
class ViltConfig:
    """Shape of a ViLT model: the patch and token embeddings and the one Transformer they share."""

    image_size: int = 64
    patch_size: int = 8
    stem: str = "patch"  # "patch": ViLT's linear patch projection; "conv": the hybrid conv stem
    vocab_size: int = 1024
    context_length: int = 48
    width: int = 128
    layers: int = 4
    heads: int = 2
    mlp_ratio: float = 4.0
    pad_id: int = 0
    ln_eps: float = 1e-6  # ViLT's ViT LayerNorm epsilon

    def __post_init__(self) -> None:
        check_shape(self)

    def to_dict(self) -> dict:
        return {"family": "vilt", **asdict(self)}


def check_shape(cfg) -> None:
    """The validation ViLT and VLMo configs share: ValueError naming the field."""
    for name in ("image_size", "patch_size", "vocab_size", "context_length", "width", "layers", "heads"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"image_size ({cfg.image_size}) must be a multiple of patch_size ({cfg.patch_size})")
    if cfg.width % cfg.heads:
        raise ValueError(f"width ({cfg.width}) must be divisible by heads ({cfg.heads})")
    if not cfg.mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be positive, got {cfg.mlp_ratio}")
    if not 0 <= cfg.pad_id < cfg.vocab_size:
        raise ValueError(f"pad_id must be a token id below vocab_size ({cfg.vocab_size}), got {cfg.pad_id}")
    if not cfg.ln_eps > 0:
        raise ValueError(f"ln_eps must be positive, got {cfg.ln_eps}")
    try:
        check_stem(cfg.stem, cfg.patch_size, cfg.width)
    except ValueError as e:
        raise ValueError(f"stem: {e}") from None


def joint_embedding(cfg) -> JointEmbedding:
    return JointEmbedding(vocab_size=cfg.vocab_size, context_length=cfg.context_length, image_size=cfg.image_size,
                          patch_size=cfg.patch_size, width=cfg.width, stem=cfg.stem, pad_id=cfg.pad_id)


def no_decay_names(model: nn.Module) -> set[str]:
    """Gains, biases, embeddings, the image CLS token and the temperature: what AdamW must not decay."""
    skip = ("embedding", "cls_token", "logit_scale")
    return {name for name, p in model.named_parameters() if p.ndim < 2 or any(s in name for s in skip)}


class Vilt(nn.Module):
    """Single-stream fusion encoder with ITM and MLM heads.

    Args:
        cfg: model shape.
    """

    config_class = ViltConfig

    def __init__(self, cfg: ViltConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = joint_embedding(cfg)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, eps=cfg.ln_eps)
        self.transformer.init_weights()
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.itm_head = ItmHead(cfg.width)
        self.mlm_head = MlmHead(cfg.width, cfg.vocab_size)

    def forward_features(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """States of the joint sequence after the final LayerNorm: (B, T + 1 + P, width); the first T
        rows are the text's, then the image CLS and the patches."""
        x, mask = self.embeddings.embed_joint(images, tokens)
        return self.norm(self.transformer(x, mask=mask))

    def itm_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Matching logits (B, 2) (column 1: matched) of the pairs (image i, text i)."""
        return self.itm_head(self.forward_features(images, tokens))

    def mlm_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (B, T, V) at every text position, the image in context."""
        states = self.forward_features(images, tokens)[:, : tokens.shape[1]]  # (B, T, width)
        return self.mlm_head(states, self.embeddings.text.word_embeddings.weight)

    def no_weight_decay(self) -> set[str]:
        return no_decay_names(self)
