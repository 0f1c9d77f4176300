"""Helpers for parity tests: reference models with every parameter made to matter, and comparisons."""

from __future__ import annotations

import torch
from torch import nn

TOL = 1e-5


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Perturb the parameters libraries initialise to constants (biases, norms, zero-init gains, BN
    statistics) so that a wrongly mapped or ignored tensor shows up in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen)
            if t.ndim == 4:  # convolutions: variance-scaled, so a deep random ResNet still depends on its input
                t.copy_(noise * (1 / t[0].numel()) ** 0.5)
            elif name.endswith("running_var"):
                t.copy_(1 + 0.2 * noise.abs())
            elif t.ndim == 1 and name.endswith("weight"):  # norm gains, some initialised to zero
                t.copy_(1 + 0.1 * noise)
            elif t.ndim <= 1 and "logit" not in name:
                t.add_(0.05 * noise)
        for name in ("logit_scale", "logit_bias"):
            if getattr(model, name, None) is not None:
                getattr(model, name).fill_({"logit_scale": 2.9, "logit_bias": -4.0}[name])
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def make_images(size: int, seed: int = 2) -> torch.Tensor:
    """Two (3, size, size) images: noise, and noise on a strong ramp (a random deep net barely tells two noises apart)."""
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    images[1] += torch.linspace(-2, 2, size).expand(3, size, size)
    return images
