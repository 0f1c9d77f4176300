"""AnyRes / Monkey-style tiling: encode a large image as encoder-size tiles plus a global view.

1. :func:`select_grid` picks, from the allowed ``(cols, rows)`` grids, the one whose canvas
   ``(cols * tile, rows * tile)`` keeps the most of the image's resolution when the image is scaled
   to fit it, and on ties wastes the least canvas (LLaVA-NeXT's ``select_best_resolution``).
2. :func:`split_tiles` resizes the image to the canvas (Monkey resizes; LLaVA-NeXT pads to keep the
   aspect ratio instead) and cuts it into ``cols * rows`` tiles in row-major order;
   :func:`global_view` resizes the whole image to one tile.
3. :class:`Tiler` encodes the global view and every tile with the same (shared) image encoder, pools
   each one's patch grid to ``pooled x pooled`` tokens (adaptive average pooling) and adds a learned
   tile-position embedding (index 0 the global view, 1 + i tile i), then concatenates them.

coembed's preprocessing makes every image of a batch the same square size, so one grid serves a batch;
the functions take any (H, W).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def select_grid(width: int, height: int, tile: int, grids: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The ``(cols, rows)`` of ``grids`` that best fits a ``width x height`` image with ``tile``-pixel tiles."""
    if not grids:
        raise ValueError("grids must name at least one (cols, rows) grid")
    best, best_key = None, None
    for cols, rows in grids:
        canvas_w, canvas_h = cols * tile, rows * tile
        scale = min(canvas_w / width, canvas_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)  # image pixels kept
        wasted = canvas_w * canvas_h - effective
        key = (effective, -wasted)
        if best_key is None or key > best_key:
            best, best_key = (int(cols), int(rows)), key
    return best


def split_tiles(images: torch.Tensor, grid: tuple[int, int], tile: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, cols * rows, C, tile, tile): resized to the grid's canvas, cut row-major."""
    cols, rows = grid
    b, c = images.shape[:2]
    canvas = F.interpolate(images, size=(rows * tile, cols * tile), mode="bilinear", align_corners=False, antialias=True)
    x = canvas.view(b, c, rows, tile, cols, tile)  # (B, C, rows, tile, cols, tile)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, rows, cols, C, tile, tile)
    return x.reshape(b, rows * cols, c, tile, tile)


def global_view(images: torch.Tensor, tile: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, tile, tile): the whole image at the encoder's size."""
    if images.shape[-2:] == (tile, tile):
        return images
    return F.interpolate(images, size=(tile, tile), mode="bilinear", align_corners=False, antialias=True)


def pool_grid(tokens: torch.Tensor, pooled: int) -> torch.Tensor:
    """(B, g * g, D) patch tokens of a square grid -> (B, pooled * pooled, D) by adaptive average pooling."""
    b, n, d = tokens.shape
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"patch tokens must form a square grid, got {n}")
    x = tokens.transpose(1, 2).reshape(b, d, g, g)  # (B, D, g, g)
    return F.adaptive_avg_pool2d(x, pooled).flatten(2).transpose(1, 2)  # (B, pooled * pooled, D)


class Tiler(nn.Module):
    """Global view + tiles through a shared encoder, pooled, with tile-position embeddings.

    Args:
        grids: allowed ``(cols, rows)`` grids.
        tile: the encoder's input size in pixels.
        pooled: each view's patch grid is pooled to ``pooled x pooled`` tokens.
        width: token width of the encoder's output.
    """

    def __init__(self, grids: Sequence[tuple[int, int]], tile: int, pooled: int, width: int) -> None:
        super().__init__()
        self.grids = [tuple(int(v) for v in g) for g in grids]
        self.tile, self.pooled = tile, pooled
        views = 1 + max(c * r for c, r in self.grids)
        self.tile_position = nn.Parameter(0.02 * torch.randn(views, width))

    def max_tokens(self) -> int:
        """Tokens of the largest grid: (1 + cols * rows) * pooled^2."""
        return self.tile_position.shape[0] * self.pooled**2

    def forward(self, images: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """(B, 3, H, W) and ``encode`` ((n, 3, tile, tile) -> (n, g * g, D) patch tokens) -> (B, V * pooled^2, D)."""
        b = images.shape[0]
        grid = select_grid(images.shape[-1], images.shape[-2], self.tile, self.grids)
        tiles = split_tiles(images, grid, self.tile)  # (B, n, 3, tile, tile)
        views = torch.cat([global_view(images, self.tile)[:, None], tiles], dim=1)  # (B, 1 + n, 3, tile, tile)
        tokens = encode(views.flatten(0, 1))  # (B * (1 + n), g * g, D)
        pooled = pool_grid(tokens, self.pooled)  # (B * (1 + n), k * k, D)
        pooled = pooled.view(b, views.shape[1], self.pooled**2, -1)  # (B, 1 + n, k * k, D)
        pooled = pooled + self.tile_position[: views.shape[1], None].to(pooled.dtype)
        return pooled.flatten(1, 2)  # (B, (1 + n) * k * k, D)
