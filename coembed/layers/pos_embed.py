"""Fixed 2D sine-cosine position embeddings (MAE's decoder positions, as MoCo v3 and MAE build them)."""

from __future__ import annotations

import torch


def sincos_1d(width: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, width): ``[sin(p * w_d), cos(p * w_d)]`` with ``w_d = 10000^(-d / (width / 2))``."""
    if width % 2:
        raise ValueError(f"a sine-cosine embedding needs an even width, got {width}")
    omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float64) / (width / 2))  # (width / 2,)
    angles = positions.double()[:, None] * omega[None]  # (M, width / 2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(grid: int, width: int) -> torch.Tensor:
    """(grid*grid, width) embedding of a square grid in row-major order (the patch order of a ViT):
    the first half of the channels encodes the column, the second the row, MAE's layout."""
    if width % 4:
        raise ValueError(f"a 2D sine-cosine embedding needs a width divisible by 4, got {width}")
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # (grid, grid) each
    return torch.cat([sincos_1d(width // 2, cols.flatten()), sincos_1d(width // 2, rows.flatten())], dim=1)
