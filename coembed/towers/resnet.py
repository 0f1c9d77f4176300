"""OpenAI's ``ModifiedResNet`` image tower (CLIP RN50 / RN101 / RN50x4 ...), in its parameter layout.

Differences from a torchvision ResNet, as in the CLIP paper: a stem of three 3x3 convolutions with a
2x2 average pool instead of one 7x7 convolution and a max pool; anti-aliased strides (an average
pool before the stride-1 convolution instead of a strided convolution, in the blocks and in the
shortcut); and an attention pool (the mean token queries every position) instead of global average
pooling. Parameter names match OpenAI / OpenCLIP checkpoints key for key.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

EXPANSION = 4
DOWNSAMPLE = 32  # total stride: stem 4, then layer2-4 halve the map three times


@dataclass(kw_only=True)
class ResNetConfig:
    """Shape of the ModifiedResNet tower: blocks per stage, stem width, attention-pool heads."""

    image_size: int = 224
    layers: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    width: int = 64
    heads: int = 32  # OpenCLIP: width * 32 // 64
    tower: str = "resnet"

    def __post_init__(self) -> None:
        self.layers = list(self.layers)
        if len(self.layers) != 4 or any(n <= 0 for n in self.layers):
            raise ValueError(f"vision.layers must be 4 positive block counts, got {self.layers}")
        if self.width <= 0 or self.width % 2:
            raise ValueError(f"vision.width must be a positive even number, got {self.width}")
        if self.image_size <= 0 or self.image_size % DOWNSAMPLE:
            raise ValueError(f"vision.image_size must be a positive multiple of {DOWNSAMPLE}, got {self.image_size}")
        if self.heads <= 0 or (self.width * DOWNSAMPLE) % self.heads:
            raise ValueError(f"vision.heads ({self.heads}) must divide the feature width {self.width * DOWNSAMPLE}")
        if self.tower != "resnet":
            raise ValueError(f"vision.tower must be 'resnet' for a ResNet config, got {self.tower!r}")

    @property
    def grid_size(self) -> int:
        return self.image_size // DOWNSAMPLE


def _conv_bn(name: str, in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> OrderedDict:
    return OrderedDict([(f"conv{name}", nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)),
                        (f"bn{name}", nn.BatchNorm2d(out_ch))])


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> [avgpool] -> 1x1 (x4 channels) with a shortcut; stride by average pooling."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        for name, in_ch, out_ch, kernel in (("1", inplanes, planes, 1), ("2", planes, planes, 3),
                                            ("3", planes, planes * EXPANSION, 1)):
            for key, module in _conv_bn(name, in_ch, out_ch, kernel).items():
                self.add_module(key, module)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.downsample = None
        if stride > 1 or inplanes != planes * EXPANSION:
            # "-1" holds no weights; "0" and "1" are the names the checkpoints use.
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                ("0", nn.Conv2d(inplanes, planes * EXPANSION, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * EXPANSION)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = self.downsample(x) if self.downsample is not None else x
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """The mean of the feature map, with learned positions, attends over all positions: (B, C, H, W) -> (B, out)."""

    def __init__(self, grid: int, width: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(grid**2 + 1, width) / width**0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)  # (B, H*W, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        B, T, C = x.shape
        q = self.q_proj(x[:, :1]).view(B, 1, self.heads, C // self.heads).transpose(1, 2)  # (B, heads, 1, hd)
        k = self.k_proj(x).view(B, T, self.heads, C // self.heads).transpose(1, 2)  # (B, heads, T, hd)
        v = self.v_proj(x).view(B, T, self.heads, C // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, C)  # (B, C)
        return self.c_proj(y)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image encoder returning one embedding per image.

    Args:
        cfg: tower shape.
        output_dim: size of the shared embedding space.
    """

    def __init__(self, cfg: ResNetConfig, output_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        half = cfg.width // 2
        for name, in_ch, out_ch, stride in (("1", 3, half, 2), ("2", half, half, 1), ("3", half, cfg.width, 1)):
            for key, module in _conv_bn(name, in_ch, out_ch, 3, stride).items():
                self.add_module(key, module)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = cfg.width
        for i, blocks in enumerate(cfg.layers):
            planes, stride = cfg.width * 2**i, 1 if i == 0 else 2
            stage = [Bottleneck(inplanes, planes, stride)]
            inplanes = planes * EXPANSION
            stage += [Bottleneck(inplanes, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.attnpool = AttentionPool2d(cfg.grid_size, cfg.width * DOWNSAMPLE, cfg.heads, output_dim)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, width, H / 4, W / 4)."""
        for i in ("1", "2", "3"):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return self.avgpool(x)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Feature map after the last stage: (B, width * 32, H / 32, W / 32)."""
        if images.shape[-2:] != (self.cfg.image_size, self.cfg.image_size):
            raise ValueError(
                f"images must be {self.cfg.image_size}x{self.cfg.image_size}, got {tuple(images.shape[-2:])}"
            )
        x = self.stem(images)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.attnpool(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))
