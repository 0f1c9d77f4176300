"""VLMo-style mixture-of-modality-experts Transformer (Bao et al., 2022; microsoft/unilm ``vlmo``).

Every block has one self-attention shared by both modalities and one feed-forward *expert* per
modality: a vision FFN (V-FFN) and a language FFN (L-FFN); the top ``vl_layers`` blocks add a
vision-language FFN (VL-FFN). Each expert is a pre-LN sub-layer with its own LayerNorm, as VLMo's
``norm2_imag`` / ``norm2_text`` / ``norm2_vl``. Routing:

- image only (``mode="image"``) and text only (``"text"``): every block uses the modality's own expert,
  the top blocks included. One set of weights is thus a dual encoder: the image CLS (resp. the
  text's first token) after the final LayerNorm, projected without bias and L2-normalised, gives the
  ITC embeddings (VLMo's ``infer_image_ft`` / ``infer_text_ft``).
- fusion (``"fusion"``, the concatenated [text; image CLS; patches]): the bottom blocks send the text
  positions to the L-FFN and the image positions to the V-FFN, the top ``vl_layers`` blocks send every
  position to the VL-FFN. The first token's state feeds the ITM head; the text positions the MLM head.

VLMo's relative position bias and layer scale are left out (its base+ model runs without them, with
absolute position embeddings, as here); padding is masked out of every attention.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from coembed.layers.attention import Attention
from coembed.layers.mlp import Mlp
from coembed.layers.transformer import mlp_hidden
from coembed.layers.vl_heads import ItmHead, MlmHead
from coembed.models.single_stream import check_shape, joint_embedding, no_decay_names

MAX_LOGIT_SCALE = 100.0
MODES = ("text", "image", "fusion")


@dataclass(kw_only=True)
class VlmoConfig:
    """Shape of a VLMo model: embeddings, the MoME blocks and the contrastive head."""

    image_size: int = 64
    patch_size: int = 8
    stem: str = "patch"  # "patch": linear patch projection (VLMo's ViT); "conv": the hybrid conv stem
    vocab_size: int = 1024
    context_length: int = 48
    width: int = 128
    layers: int = 4
    vl_layers: int = 1  # top blocks with a VL-FFN (VLMo-base: 2 of 12)
    heads: int = 2
    mlp_ratio: float = 4.0
    embed_dim: int = 128  # ITC embedding size (VLMo: the width)
    init_logit_scale: float = math.log(1 / 0.07)
    pad_id: int = 0
    ln_eps: float = 1e-6

    def __post_init__(self) -> None:
        check_shape(self)
        if isinstance(self.vl_layers, bool) or not isinstance(self.vl_layers, int) or not 0 <= self.vl_layers <= self.layers:
            raise ValueError(f"vl_layers must be an int in [0, layers={self.layers}], got {self.vl_layers!r}")
        if isinstance(self.embed_dim, bool) or not isinstance(self.embed_dim, int) or self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be a positive int, got {self.embed_dim!r}")

    def to_dict(self) -> dict:
        return {"family": "vlmo", **asdict(self)}


class Expert(nn.Module):
    """A pre-LN feed-forward sub-layer: ``mlp(norm(x))`` (the caller adds the residual)."""

    def __init__(self, width: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x))


class MomeBlock(nn.Module):
    """Shared self-attention, then the expert(s) the mode routes each position to."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, eps: float, *, with_vl: bool) -> None:
        super().__init__()
        hidden = mlp_hidden(width, mlp_ratio)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        names = ("text", "image", "vl") if with_vl else ("text", "image")
        self.experts = nn.ModuleDict({name: Expert(width, hidden, eps) for name in names})

    @property
    def with_vl(self) -> bool:
        return "vl" in self.experts

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, mode: str, text_len: int = 0) -> torch.Tensor:
        """``x`` (B, L, width); in fusion mode the first ``text_len`` positions are the text."""
        x = x + self.attn(self.ln_1(x), mask=mask)
        if mode != "fusion":
            return x + self.experts[mode](x)
        if self.with_vl:
            return x + self.experts["vl"](x)
        text, image = x[:, :text_len], x[:, text_len:]  # (B, T, width), (B, 1 + P, width)
        return torch.cat([text + self.experts["text"](text), image + self.experts["image"](image)], dim=1)


class Vlmo(nn.Module):
    """One MoME Transformer used as a dual encoder (ITC) and as a fusion encoder (ITM, MLM).

    Args:
        cfg: model shape.
    """

    config_class = VlmoConfig

    def __init__(self, cfg: VlmoConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = joint_embedding(cfg)
        first_vl = cfg.layers - cfg.vl_layers
        self.blocks = nn.ModuleList(
            MomeBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.ln_eps, with_vl=i >= first_vl) for i in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.image_proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.itm_head = ItmHead(cfg.width)
        self.mlm_head = MlmHead(cfg.width, cfg.vocab_size)
        self._init_blocks()

    def _init_blocks(self) -> None:
        # CLIP's depth-scaled initialisation (as coembed's Transformer.init_weights), for every expert.
        attn_std, fc_std = self.cfg.width**-0.5, (2 * self.cfg.width) ** -0.5
        proj_std = attn_std * (2 * self.cfg.layers) ** -0.5
        for block in self.blocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            for expert in block.experts.values():
                nn.init.normal_(expert.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(expert.mlp.c_proj.weight, std=proj_std)

    @property
    def text_cfg(self) -> VlmoConfig:
        """Where the text fields (``context_length``, ``pad_id``) live, as ``DualEncoder.text_cfg``: the
        shared evaluation embeds captions of either through it."""
        return self.cfg

    def run_blocks(self, x: torch.Tensor, mask: torch.Tensor | None, mode: str, text_len: int = 0) -> torch.Tensor:
        """All blocks in ``mode`` (one of :data:`MODES`), then the final LayerNorm: (B, L, width) -> (B, L, width)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for block in self.blocks:
            x = block(x, mask, mode, text_len)
        return self.norm(x)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Image-only pass through the V-FFN experts: (B, 3, H, W) -> (B, 1 + P, width)."""
        return self.run_blocks(self.embeddings.embed_image(images), None, "image")

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text-only pass through the L-FFN experts: (B, T) -> (B, T, width)."""
        x, mask = self.embeddings.embed_text(tokens)
        return self.run_blocks(x, mask, "text")

    def fusion_features(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Fusion pass over [text; image]: (B, T + 1 + P, width)."""
        x, mask = self.embeddings.embed_joint(images, tokens)
        return self.run_blocks(x, mask, "fusion", tokens.shape[1])

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """ITC image embeddings (B, embed_dim): the image CLS of the image-only pass, projected."""
        x = self.image_proj(self.image_features(images)[:, 0])
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """ITC text embeddings (B, embed_dim): the first token of the text-only pass, projected."""
        x = self.text_proj(self.text_features(tokens)[:, 0])
        return F.normalize(x, dim=-1) if normalize else x

    def temperature(self) -> torch.Tensor:
        """The ITC logit multiplier ``exp(logit_scale)``, clamped at 100 as in CLIP."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def itm_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Matching logits (B, 2) (column 1: matched) of the pairs (image i, text i), fusion mode."""
        return self.itm_head(self.fusion_features(images, tokens))

    def mlm_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (B, T, V) at every text position of the fusion pass."""
        states = self.fusion_features(images, tokens)[:, : tokens.shape[1]]  # (B, T, width)
        return self.mlm_head(states, self.embeddings.text.word_embeddings.weight)

    def no_weight_decay(self) -> set[str]:
        return no_decay_names(self)
