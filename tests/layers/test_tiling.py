"""AnyRes tiling: grid choice against transformers' own select_best_resolution, tiles against a naive crop loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from coembed.layers.tiling import Tiler, global_view, pool_grid, select_grid, split_tiles

GRIDS = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (1, 3)]


@pytest.mark.parametrize("size", [(64, 64), (128, 40), (40, 128), (100, 64), (30, 90), (200, 199), (17, 300)])
def test_grid_choice_equals_llava_next_select_best_resolution(size: tuple[int, int]) -> None:
    image_processing_utils = pytest.importorskip("transformers.image_processing_utils")
    width, height = size
    tile = 32
    # transformers works in (height, width) resolutions
    want = image_processing_utils.select_best_resolution((height, width), [(r * tile, c * tile) for c, r in GRIDS])
    cols, rows = select_grid(width, height, tile, GRIDS)
    assert (rows * tile, cols * tile) == tuple(want)


def test_wide_and_tall_images_get_wide_and_tall_grids() -> None:
    assert select_grid(96, 32, 32, GRIDS) == (3, 1) and select_grid(32, 96, 32, GRIDS) == (1, 3)


def test_tiles_equal_a_naive_crop_loop() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 50, 70, generator=g)
    tile, (cols, rows) = 16, (3, 2)
    tiles = split_tiles(images, (cols, rows), tile)
    canvas = F.interpolate(images, size=(rows * tile, cols * tile), mode="bilinear", align_corners=False, antialias=True)
    assert tiles.shape == (2, rows * cols, 3, tile, tile)
    for b in range(2):
        for r in range(rows):
            for c in range(cols):
                crop = canvas[b, :, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                assert torch.equal(tiles[b, r * cols + c], crop)


def test_pooling_equals_averaging_each_block() -> None:
    tokens = torch.randn(2, 16, 5)  # a 4 x 4 grid
    pooled = pool_grid(tokens, 2)
    grid = tokens.view(2, 4, 4, 5)
    for i in range(2):
        for j in range(2):
            block = grid[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(1, 2))
            assert torch.allclose(pooled[:, i * 2 + j], block, atol=1e-6)
    with pytest.raises(ValueError, match="square grid"):
        pool_grid(torch.randn(1, 15, 5), 2)


def test_tiler_encodes_the_global_view_then_each_tile_with_its_position() -> None:
    torch.manual_seed(0)
    tiler = Tiler([(1, 1), (2, 2)], tile=16, pooled=1, width=3)
    images = torch.randn(2, 3, 32, 32)
    calls = []

    def encode(views: torch.Tensor) -> torch.Tensor:  # (n, 3, 16, 16) -> (n, 4, 3): 4 "patches" of channel means
        calls.append(views.shape)
        return F.avg_pool2d(views, 8).flatten(2).transpose(1, 2)

    out = tiler(images, encode)
    assert calls == [(2 * 5, 3, 16, 16)] and out.shape == (2, 5, 3)  # grid (2, 2) for a 32 px square
    views = [global_view(images, 16)] + list(split_tiles(images, (2, 2), 16).unbind(1))
    for v, view in enumerate(views):
        want = view.mean(dim=(2, 3)) + tiler.tile_position[v]
        assert torch.allclose(out[:, v], want, atol=1e-5)
