"""Fixed 2D sine-cosine positions against the formula written out per token and channel."""

from __future__ import annotations

import math

import pytest
import torch

from coembed.layers.pos_embed import sincos_2d


def formula(grid: int, width: int) -> torch.Tensor:
    """MAE's get_2d_sincos_pos_embed: channels [sin(col w), cos(col w), sin(row w), cos(row w)],
    w_d = 10000^(-d / (width / 4)), tokens row-major."""
    quarter = width // 4
    out = torch.zeros(grid * grid, width)
    for row in range(grid):
        for col in range(grid):
            for d in range(quarter):
                w = 10000 ** (-d / quarter)
                for k, value in enumerate((math.sin(col * w), math.cos(col * w), math.sin(row * w), math.cos(row * w))):
                    out[row * grid + col, k * quarter + d] = value
    return out


@pytest.mark.parametrize("grid,width", [(4, 8), (3, 16), (8, 64)])
def test_sincos_2d_equals_the_formula(grid: int, width: int) -> None:
    got = sincos_2d(grid, width)
    assert got.shape == (grid * grid, width) and got.dtype == torch.float32
    assert torch.allclose(got, formula(grid, width), atol=1e-6)


def test_every_position_differs_and_width_is_checked() -> None:
    emb = sincos_2d(8, 32)
    assert torch.cdist(emb, emb).add(torch.eye(64)).min() > 0
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(4, 6)
