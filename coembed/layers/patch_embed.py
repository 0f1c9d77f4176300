"""Convolutional stem: a hybrid-ViT patch embedding (the ResNet stem of ViT's hybrid models, and
"Early Convolutions Help Transformers See Better", Xiao et al., 2021), an alternative to ViT's
single stride-``patch`` convolution.

``log2(patch)`` stages of 3x3 convolution (stride 1) -> BatchNorm -> ReLU -> 2x2 max-pool, channels
doubling up to ``width / 2``, then a 1x1 convolution to the width: one token per ``patch x patch``
cell, as the plain patch embedding gives. Measured on `shapes` (single objects, 300 steps of 128,
see docs/benchmarks.md): shape accuracy 0.99 with this stem against 0.63 with stride-2 convolutions
and below that with the plain patch embedding. OpenAI / OpenCLIP checkpoints use the plain
``conv1``, which stays the default.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def stem_channels(patch_size: int, width: int) -> list[int]:
    """Output channels of the stages, e.g. ``(8, 128) -> [16, 32, 64]``."""
    steps = int(math.log2(patch_size)) if patch_size > 0 else 0
    if 2**steps != patch_size or steps < 1:
        raise ValueError(f"a conv stem needs a power-of-two patch_size >= 2, got {patch_size}")
    return [max(width >> (steps - i), 8) for i in range(steps)]


class ConvStem(nn.Module):
    """(B, 3, H, W) -> (B, width, H / patch, W / patch) feature map."""

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in stem_channels(patch_size, width):
            layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch = out_ch
        layers.append(nn.Conv2d(in_ch, width, kernel_size=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # channels_last: oneDNN's convolution, BatchNorm and max-pool kernels run in NHWC, so NCHW
        # input would be converted around every layer (the stem's step ran ~1.2-1.3x slower that way).
        return self.layers(images.contiguous(memory_format=torch.channels_last))
