"""The shapes generator's PNG writer: Pillow (an independent decoder) reads back the exact pixels."""

import io

import numpy as np
import pytest
from PIL import Image

from coembed.data.synthetic.png import encode_png, write_png


@pytest.mark.parametrize("shape", [(64, 64), (1, 1), (3, 17), (40, 7)])
@pytest.mark.parametrize("level", [0, 1, 9])
def test_pillow_decodes_the_exact_pixels(shape, level):
    rgb = np.random.default_rng(sum(shape) + level).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(rgb, level))) as im:
        im.load()
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (shape[1], shape[0])
        np.testing.assert_array_equal(np.asarray(im), rgb)


def test_write_png_writes_a_file_pillow_verifies(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:5, 3:6] = (250, 10, 120)
    path = tmp_path / "x.png"
    write_png(path, rgb)
    with Image.open(path) as im:
        im.verify()  # checks the chunk CRCs
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), rgb)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)])
def test_rejects_what_is_not_rgb8(bad):
    with pytest.raises(ValueError, match="uint8"):
        encode_png(bad)
