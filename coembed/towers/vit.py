"""Vision Transformer image tower in the OpenCLIP/OpenAI ``VisionTransformer`` layout.

Image -> conv patch embedding -> [class token; patches] + learned positions -> ln_pre ->
pre-LN Transformer -> ln_post -> class token -> linear projection into the shared space.

SigLIP's tower is the same stack with other switches: no class token, a patch convolution with a
bias, no ``ln_pre``, LayerNorm eps 1e-6, a multihead-attention-pooling head (``pool="map"``) and no
projection (``proj=False``, the shared space is the tower width).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from coembed.layers.patch_dropout import drop_patches
from coembed.layers.patch_embed import ConvStem, stem_channels
from coembed.layers.pooling import MapHead
from coembed.layers.transformer import Transformer, mlp_hidden

POOLS = ("tok", "map")


@dataclass(kw_only=True)
class VisionConfig:
    """Shape of the ViT image tower."""

    image_size: int = 64
    patch_size: int = 8
    width: int = 256
    layers: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    stem: str = "patch"  # "patch": OpenCLIP's single conv1; "conv": a stack of 3x3 convs (ConvStem)
    tower: str = "vit"  # tells a ViT config from a ResNet one (towers/resnet.py) in config.json
    class_token: bool = True
    ln_pre: bool = True
    patch_bias: bool = False  # a bias on conv1 (SigLIP)
    pool: str = "tok"  # "tok": the class token; "map": attention pooling with a learned probe (SigLIP)
    proj: bool = True  # False: no projection, the embedding is the pooled token (embed_dim == width)
    ln_eps: float = 1e-5
    # FLIP: share of patch tokens dropped from every training image (coembed.layers.patch_dropout);
    # evaluation always sees all patches. 0 disables it.
    patch_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "width", "layers", "heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"vision.{name} must be positive, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision.image_size ({self.image_size}) must be a multiple of vision.patch_size ({self.patch_size})"
            )
        if self.width % self.heads:
            raise ValueError(f"vision.width ({self.width}) must be divisible by vision.heads ({self.heads})")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(f"vision.patch_dropout must be in [0, 1), got {self.patch_dropout}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"vision.mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"vision.stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.stem == "conv":
            stem_channels(self.patch_size, self.width)  # raises for a patch size it cannot build
        if self.tower != "vit":
            raise ValueError(f"vision.tower must be 'vit' for a ViT config, got {self.tower!r}")
        if self.pool not in POOLS:
            raise ValueError(f"vision.pool must be one of {POOLS}, got {self.pool!r}")
        if self.pool == "tok" and not self.class_token:
            raise ValueError("vision.pool 'tok' needs vision.class_token; use pool 'map' without one")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


class VisionTransformer(nn.Module):
    """ViT image encoder returning one embedding per image.

    Args:
        cfg: tower shape.
        output_dim: size of the shared embedding space.
        quick_gelu: use QuickGELU (OpenAI weights) instead of GELU (ignored when ``act`` is given).
        act: activation name (see :data:`coembed.layers.mlp.ACTIVATIONS`).
    """

    def __init__(self, cfg: VisionConfig, output_dim: int, *, quick_gelu: bool = False, act: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        act = act or ("quick_gelu" if quick_gelu else "gelu")
        width, scale = cfg.width, cfg.width**-0.5
        if cfg.stem == "conv":
            self.stem = ConvStem(cfg.patch_size, width)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(scale * torch.randn(width)) if cfg.class_token else None
        tokens = cfg.grid_size**2 + int(cfg.class_token)
        self.positional_embedding = nn.Parameter(scale * torch.randn(tokens, width))
        self.ln_pre = nn.LayerNorm(width, eps=cfg.ln_eps) if cfg.ln_pre else nn.Identity()
        self.transformer = Transformer(width, cfg.layers, cfg.heads, cfg.mlp_ratio, act=act, eps=cfg.ln_eps)
        self.ln_post = nn.LayerNorm(width, eps=cfg.ln_eps)
        if cfg.pool == "map":
            self.attn_pool = MapHead(width, cfg.heads, mlp_hidden(width, cfg.mlp_ratio), act=act, eps=cfg.ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim)) if cfg.proj else None

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """Embed patches: (B, 3, H, W) -> (B, grid*grid, width)."""
        x = self.stem(images) if self.cfg.stem == "conv" else self.conv1(images)  # (B, width, grid, grid)
        return x.flatten(2).transpose(1, 2)  # (B, grid*grid, width)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """All output tokens after ``ln_post``: (B, [1 +] grid*grid, width); token 0 is the class token if any."""
        return self.ln_post(self.transformer(self._input_tokens(images)))

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[class token;] patch embeddings + positions, before patch dropout and ``ln_pre``:
        (B, 3, H, W) -> (B, [1 +] grid*grid, width). MAE masks these tokens (coembed.models.mae)."""
        if images.shape[-2:] != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(
                f"images must be {self.cfg.image_size}x{self.cfg.image_size}, got {tuple(images.shape[-2:])}"
            )
        x = self.patchify(images)
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, width)
            x = torch.cat([cls, x], dim=1)
        return x + self.positional_embedding.to(x.dtype)

    def _input_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The transformer's input: :meth:`embed_tokens`, patch dropout, ``ln_pre``."""
        x = self.embed_tokens(images)
        if self.training and self.cfg.patch_dropout:
            x = drop_patches(x, self.cfg.patch_dropout, keep_first=self.class_embedding is not None)
        return self.ln_pre(x)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool (class token or attention probe) and project: (B, T, width) -> (B, output_dim)."""
        pooled = self.attn_pool(tokens) if self.cfg.pool == "map" else tokens[:, 0]
        return pooled @ self.proj if self.proj is not None else pooled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.cfg.pool == "tok" and self.cfg.layers:
            # Class-token pooling reads token 0 alone: the last block computes only that token.
            return self.forward_head(self.ln_post(self.transformer.forward_first(self._input_tokens(images))))
        return self.forward_head(self.forward_features(images))
