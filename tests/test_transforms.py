"""Tests for coembed.transforms: robust image loading and CLIP preprocessing vs naive references."""

from __future__ import annotations

import io
import os
import pickle
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from coembed.errors import DataError
from coembed.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    ImageLoadError,
    ImageTransform,
    load_image,
    pil_batch_to_tensor,
)


def _save(img: Image.Image, path, fmt: str | None = None, **kwargs) -> str:
    img.save(path, format=fmt, **kwargs)
    return str(path)


def _rgb_noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_with_header_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR claims ``width x height`` (CRC fixed up)."""
    data = bytearray(_png_bytes(Image.new("L", (1, 1))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _reason(excinfo) -> str:
    return excinfo.value.reason


# ---------------------------------------------------------------------------------------------
# load_image: bad inputs


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(DataError, match="file not found") as ei:
        load_image(path)
    assert str(path) in str(ei.value)


def test_broken_symlink(tmp_path):
    link = tmp_path / "link.png"
    os.symlink(tmp_path / "gone.png", link)
    with pytest.raises(DataError, match="broken symlink"):
        load_image(link)


def test_zero_bytes(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty file") as ei:
        load_image(path)
    assert str(path) in str(ei.value)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, I am not a JPEG\n")
    with pytest.raises(DataError, match="not an image"):
        load_image(path)


def test_directory_and_fifo_are_rejected_without_blocking(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(DataError, match="directory"):
        load_image(tmp_path / "dir.png")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        load_image(fifo)  # opening a FIFO would block forever


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied(tmp_path):
    path = _save(_rgb_noise(4, 4), tmp_path / "secret.png")
    os.chmod(path, 0)
    try:
        with pytest.raises(DataError, match="permission denied"):
            load_image(path)
    finally:
        os.chmod(path, 0o644)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_raises_instead_of_grey(tmp_path, fmt):
    buf = io.BytesIO()
    _rgb_noise(64, 64).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as ei:
        load_image(path)
    assert str(path) in str(ei.value)


def test_too_many_pixels_with_small_limit(tmp_path):
    path = _save(_rgb_noise(20, 10), tmp_path / "bomb.png")
    with pytest.raises(DataError, match="too many pixels") as ei:
        load_image(path, max_pixels=199)
    assert "20x10" in _reason(ei)
    assert load_image(path, max_pixels=200).size == (20, 10)


@pytest.mark.parametrize(
    ("width", "height", "max_pixels"),
    [
        (30000, 30000, 50_000_000),  # over 2x Pillow's limit: Pillow's DecompressionBombError
        (9000, 9000, 50_000_000),  # under Pillow's limit: our header check
        (10000, 10000, 10**9),  # between 1x and 2x Pillow's limit: its warning, made an error
    ],
)
def test_huge_header_rejected_before_decoding(tmp_path, width, height, max_pixels):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_with_header_size(width, height))
    filters_before = list(warnings.filters)
    start = time.perf_counter()
    with pytest.raises(DataError, match="too many pixels"):
        load_image(path, max_pixels=max_pixels)
    assert time.perf_counter() - start < 1.0  # no 900-megapixel allocation happened
    assert warnings.filters == filters_before  # the warning filter was local


def test_image_load_error_pickles():
    err = pickle.loads(pickle.dumps(ImageLoadError("/x/a.png", "not an image: nope")))
    assert isinstance(err, DataError)
    assert (err.path, err.reason) == ("/x/a.png", "not an image: nope")
    assert str(err) == "cannot load image /x/a.png: not an image: nope"


# ---------------------------------------------------------------------------------------------
# load_image: modes and formats


def test_rgb_png_roundtrip_exact(tmp_path):
    img = _rgb_noise(7, 5)
    out = load_image(_save(img, tmp_path / "a.png"))
    assert out.mode == "RGB" and out.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


@pytest.mark.parametrize("size", [(1, 1), (1000, 2), (2, 1000)])
def test_tiny_and_extreme_aspect(tmp_path, size):
    out = load_image(_save(_rgb_noise(*size), tmp_path / "x.png"))
    assert out.size == size
    assert ImageTransform(8)(out).shape == (3, 8, 8)


def test_grey_and_bilevel(tmp_path):
    grey = load_image(_save(Image.new("L", (3, 2), 77), tmp_path / "l.png"))
    assert np.asarray(grey).tolist() == [[[77] * 3] * 3] * 2
    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    out = np.asarray(load_image(_save(bits, tmp_path / "b.png")))
    assert out.tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_rgba_and_la_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    rgba.putpixel((0, 1), (0, 0, 0, 128))
    out = np.asarray(load_image(_save(rgba, tmp_path / "a.png")))
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white, not red/black
    assert out[1, 1].tolist() == [255, 0, 0]
    assert np.abs(out[1, 0].astype(int) - 127).max() <= 1  # black at 50% over white
    la = Image.new("LA", (1, 1), (0, 0))
    assert np.asarray(load_image(_save(la, tmp_path / "la.png"))).tolist() == [[[255, 255, 255]]]


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    plain = np.asarray(load_image(_save(pal, tmp_path / "p.png")))
    assert plain.tolist() == [[[0, 0, 0], [0, 255, 0]]]
    keyed = np.asarray(load_image(_save(pal, tmp_path / "pt.png", transparency=0)))
    assert keyed.tolist() == [[[255, 255, 255], [0, 255, 0]]]  # transparent black -> white


def test_grey_png_with_transparency_key(tmp_path):
    img = Image.new("L", (2, 1), 0)
    img.putpixel((1, 0), 50)
    out = np.asarray(load_image(_save(img, tmp_path / "lt.png", transparency=0)))
    assert out.tolist() == [[[255, 255, 255], [50, 50, 50]]]


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = np.asarray(load_image(_save(cmyk, tmp_path / "c.jpg", quality=95))).astype(int)
    assert out.shape == (16, 16, 3)
    assert np.abs(out - np.array([255, 0, 0])).max() <= 8


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    out = np.asarray(load_image(_save(img, tmp_path / "g16.png")))
    expected = [int(round(v / 65535 * 255)) for v in values[0]]  # naive reference
    assert out[0, :, 0].tolist() == expected == [0, 1, 128, 255]
    assert (out == out[..., :1]).all()


def test_int32_and_float_tiff(tmp_path):
    i32 = Image.fromarray(np.array([[0, 32768, 65535, 70000]], dtype=np.int32))
    assert i32.mode == "I"
    out = np.asarray(load_image(_save(i32, tmp_path / "i.tif")))
    assert out[0, :, 0].tolist() == [0, 128, 255, 255]
    f01 = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert f01.mode == "F"
    out = np.asarray(load_image(_save(f01, tmp_path / "f.tif")))
    assert out[0, :, 0].tolist() == [0, 128, 255, 0]
    f255 = Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32))
    assert np.asarray(load_image(_save(f255, tmp_path / "g.tif")))[0, :, 0].tolist() == [0, 100, 255]


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(_save(stored, tmp_path / "r.jpg", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    arr = np.asarray(out).astype(int)
    assert np.abs(arr[5, 10] - [255, 0, 0]).max() < 30  # stored left edge is now on top
    assert np.abs(arr[35, 10] - [0, 0, 255]).max() < 30


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 2
    out = np.asarray(load_image(path)).astype(int)
    assert np.abs(out - [255, 0, 0]).max() <= 4


def test_non_utf8_file_name(tmp_path):
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.png")
    _save(_rgb_noise(3, 3), raw, "PNG")
    out = load_image(os.fsdecode(raw))
    assert out.size == (3, 3)


# ---------------------------------------------------------------------------------------------
# ImageTransform


def _naive_normalise(img: Image.Image, mean, std) -> np.ndarray:
    """Per-pixel reference in plain python loops: (3, H, W)."""
    w, h = img.size
    out = np.zeros((3, h, w), dtype=np.float64)
    for y in range(h):
        for x in range(w):
            pixel = img.getpixel((x, y))
            for c in range(3):
                out[c, y, x] = (pixel[c] / 255.0 - mean[c]) / std[c]
    return out


def _naive_resize_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision Resize(size) (bicubic, PIL) + CenterCrop(size), written out by hand."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    full = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return full.crop((left, top, left + size, top + size))


def test_normalisation_matches_naive_reference():
    img = _rgb_noise(5, 5, seed=3)
    out = ImageTransform(5)(img)  # already 5x5: the fast path, no resampling
    assert out.dtype == torch.float32 and out.shape == (3, 5, 5) and out.is_contiguous()
    np.testing.assert_allclose(out.numpy(), _naive_normalise(img, CLIP_MEAN, CLIP_STD), rtol=0, atol=1e-5)


def test_custom_mean_std():
    img = _rgb_noise(4, 4, seed=4)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)
    out = ImageTransform(4, mean=mean, std=std)(img)
    np.testing.assert_allclose(out.numpy(), _naive_normalise(img, mean, std), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("w", "h", "size"), [(50, 30, 16), (31, 64, 16), (7, 5, 3), (64, 64, 20), (1000, 2, 8), (3, 3, 10)]
)
def test_shortest_resize_and_center_crop_match_reference(w, h, size):
    img = _rgb_noise(w, h, seed=w + h)
    got = np.asarray(ImageTransform(size).resize(img)).astype(int)
    want = np.asarray(_naive_resize_crop(img, size)).astype(int)
    assert got.shape == want.shape == (size, size, 3)
    assert np.abs(got - want).max() <= 1  # box-resize differs only by float rounding


def test_center_crop_offset_is_torchvision_rounding():
    # 2x9 grid of distinct columns, size 2: no scaling on the short side, so the crop offset is
    # visible exactly: new_w = 9, left = int(round(7 / 2)) = round(3.5) = 4 (floor would give 3).
    arr = np.zeros((2, 9, 3), dtype=np.uint8)
    arr[:, :, 0] = np.arange(9) * 30
    got = np.asarray(ImageTransform(2).resize(Image.fromarray(arr)))
    assert got[0, :, 0].tolist() == [120, 150]


def test_squash_mode_matches_plain_resize():
    img = _rgb_noise(30, 11, seed=5)
    got = ImageTransform(8, resize_mode="squash").resize(img)
    want = img.resize((8, 8), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_extreme_aspect_does_not_build_huge_intermediate():
    img = _rgb_noise(100_000, 1)  # a full shorter-side resize would be 22,400,000 x 224
    start = time.perf_counter()
    out = ImageTransform(224)(img)
    assert out.shape == (3, 224, 224)
    assert time.perf_counter() - start < 2.0


def test_transform_accepts_non_rgb_input():
    out = ImageTransform(2)(Image.new("L", (2, 2), 255))
    expected = [(1.0 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": -3}, "image_size"),
        ({"image_size": 2.5}, "image_size"),
        ({"image_size": True}, "image_size"),
        ({"image_size": 8, "mean": (0.5, 0.5)}, "mean"),
        ({"image_size": 8, "std": (0.5, 0.5, 0.5, 0.5)}, "std"),
        ({"image_size": 8, "std": (0.5, 0.0, 0.5)}, "std"),
        ({"image_size": 8, "mean": (0.5, float("nan"), 0.5)}, "mean"),
        ({"image_size": 8, "resize_mode": "crop"}, "resize_mode"),
    ],
)
def test_transform_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ImageTransform(**kwargs)


def test_transform_is_picklable_and_normalises_sequences():
    t = ImageTransform(image_size=4, mean=[0.1, 0.2, 0.3])
    assert t.mean == (0.1, 0.2, 0.3)
    assert pickle.loads(pickle.dumps(t)) == t


def test_pil_batch_to_tensor():
    t = ImageTransform(6)
    imgs = [_rgb_noise(10, 7, seed=i) for i in range(3)]
    batch = pil_batch_to_tensor(imgs, t)
    assert batch.shape == (3, 3, 6, 6)
    for i, img in enumerate(imgs):
        torch.testing.assert_close(batch[i], t(img), rtol=0, atol=0)
    assert pil_batch_to_tensor([], t).shape == (0, 3, 6, 6)
