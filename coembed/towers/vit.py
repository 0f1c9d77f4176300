"""Vision Transformer image tower in the OpenCLIP/OpenAI ``VisionTransformer`` layout.

Image -> conv patch embedding -> [class token; patches] + learned positions -> ln_pre ->
pre-LN Transformer -> ln_post -> class token -> linear projection into the shared space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from coembed.layers.patch_embed import ConvStem, stem_channels
from coembed.layers.transformer import Transformer


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
        if not self.mlp_ratio > 0:
            raise ValueError(f"vision.mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"vision.stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.stem == "conv":
            stem_channels(self.patch_size, self.width)  # raises for a patch size it cannot build

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


class VisionTransformer(nn.Module):
    """ViT image encoder returning one embedding per image.

    Args:
        cfg: tower shape.
        output_dim: size of the shared embedding space.
        quick_gelu: use QuickGELU (OpenAI weights) instead of GELU.
    """

    def __init__(self, cfg: VisionConfig, output_dim: int, *, quick_gelu: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        width, scale = cfg.width, cfg.width**-0.5
        if cfg.stem == "conv":
            self.stem = ConvStem(cfg.patch_size, width)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid_size**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.heads, cfg.mlp_ratio, quick_gelu=quick_gelu)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """Embed patches: (B, 3, H, W) -> (B, grid*grid, width)."""
        x = self.stem(images) if self.cfg.stem == "conv" else self.conv1(images)  # (B, width, grid, grid)
        return x.flatten(2).transpose(1, 2)  # (B, grid*grid, width)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """All output tokens after ``ln_post``: (B, 1 + grid*grid, width); token 0 is the class token."""
        if images.shape[-2:] != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(
                f"images must be {self.cfg.image_size}x{self.cfg.image_size}, got {tuple(images.shape[-2:])}"
            )
        x = self.patchify(images)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (B, 1, width)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pool the class token and project: (B, T, width) -> (B, output_dim)."""
        return tokens[:, 0] @ self.proj

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))
