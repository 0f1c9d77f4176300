"""Image loading and CLIP-style preprocessing (Pillow + numpy + torch, no torchvision).

:func:`load_image` turns any file Pillow can decode into an RGB image, or raises
:class:`ImageLoadError` (a :class:`~coembed.errors.DataError`) naming the path and the reason.
:class:`ImageTransform` reproduces OpenCLIP's default eval preprocessing: bicubic resize of the
shorter side, center crop, scale to [0, 1], normalise with the CLIP mean / std.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from coembed.errors import DataError

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "ImageLoadError",
    "ImageTransform",
    "decode_image_bytes",
    "load_image",
    "os_error_reason",
    "pil_batch_to_tensor",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Modes that carry an alpha channel; they are composited on white so transparent areas do not turn
# black (Pillow's plain convert("RGB") drops alpha and exposes whatever colour lies underneath).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class ImageLoadError(DataError):
    """An image file cannot be used.

    Attributes:
        path: the file that failed.
        reason: short ``"category: detail"`` text without the path (e.g. ``"not an image: ..."``),
            suitable for :class:`coembed.data.datasets.SkipReport`.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot load image {path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):
        # Default exception pickling would call __init__ with the message only; DataLoader workers
        # pickle exceptions, so keep both fields.
        return (type(self), (self.path, self.reason))


def load_image(path: str | os.PathLike, *, max_pixels: int = 50_000_000) -> Image.Image:
    """Decode an image file into a fully loaded RGB image.

    The first frame of animations is used, EXIF orientation is applied, transparency is
    composited on white and 16-bit / float images are rescaled to 8 bits. The pixel count is
    checked from the header before any pixel data is decoded. Pillow's own decompression-bomb
    limit (``Image.MAX_IMAGE_PIXELS``) also applies, as an error, so the effective limit is the
    smaller of the two.

    Args:
        path: image file.
        max_pixels: largest accepted ``width * height``.

    Raises:
        ImageLoadError: missing, unreadable, empty, not an image, truncated / corrupt, too many
            pixels or an unsupported mode; the message names the path and the reason.
    """
    path = os.fspath(path)
    _check_regular_file(path)
    return _decode_guarded(path, path, max_pixels)


def decode_image_bytes(data: bytes, *, name: str = "upload", max_pixels: int = 50_000_000) -> Image.Image:
    """:func:`load_image` for bytes in memory (an upload); ``name`` stands for the path in errors."""
    if not data:
        raise ImageLoadError(name, "empty file: 0 bytes")
    return _decode_guarded(io.BytesIO(data), name, max_pixels)


def _decode_guarded(source, path: str, max_pixels: int) -> Image.Image:
    """Decode ``source`` (a path or file object), turning every failure into :class:`ImageLoadError`."""
    try:
        with warnings.catch_warnings():
            # Local only: Pillow warns (not raises) between MAX_IMAGE_PIXELS and twice that.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return _decode(source, path, max_pixels)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(path, f"too many pixels: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(path, "not an image: unrecognised file format") from None
    except PermissionError:
        raise ImageLoadError(path, "permission denied") from None
    except Exception as e:  # noqa: BLE001
        # Pillow's plugins report corrupt data with many exception types (OSError, SyntaxError,
        # ValueError, struct.error, EOFError, ...); for a data pipeline they all mean "bad file".
        raise ImageLoadError(path, f"truncated or corrupt: {type(e).__name__}: {e}") from None


def _check_regular_file(path: str) -> None:
    """Reject paths that are missing, dangling symlinks, directories, FIFOs or empty files."""
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:  # ValueError: embedded NUL or unencodable name
        raise ImageLoadError(path, os_error_reason(path, e)) from None
    if not stat.S_ISREG(st.st_mode):
        # Opening a FIFO would block forever; directories give confusing errors.
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ImageLoadError(path, f"not an image: path is {kind}")
    if st.st_size == 0:
        raise ImageLoadError(path, "empty file: 0 bytes")


def os_error_reason(path: str | os.PathLike, error: OSError | ValueError) -> str:
    """The skip reason for an OS error on an image path, in the categories :func:`load_image` reports
    (``"broken symlink"``, ``"file not found"``, ``"permission denied"``, ``"cannot access file"``)."""
    if isinstance(error, FileNotFoundError):
        return "broken symlink: its target does not exist" if os.path.islink(path) else "file not found"
    if isinstance(error, PermissionError):
        return "permission denied"
    return f"cannot access file: {getattr(error, 'strerror', None) or error}"  # symlink loops, over-long names


def _decode(source, path: str, max_pixels: int) -> Image.Image:
    """Open lazily, check the header size, then decode frame 0 and convert to RGB."""
    with Image.open(source) as img:
        width, height = img.size
        if width * height > max_pixels:
            raise ImageLoadError(
                path, f"too many pixels: {width}x{height} = {width * height} > max_pixels={max_pixels}"
            )
        if width == 0 or height == 0:
            raise ImageLoadError(path, f"not an image: size {width}x{height}")
        img.load()  # inside the caller's try: truncated data raises here instead of turning grey
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB (alpha on white, 16-bit and float rescaled)."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(img)).convert("RGB")
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...; unsupported ones raise ValueError


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """Rescale a single-channel 16-bit, 32-bit int or float image to uint8.

    Pillow's own ``convert("L")`` clips these at 255 instead of scaling, so a mid-grey 16-bit image
    would come out white. ``I`` is treated as 16-bit (that is how Pillow presents 16-bit PNG and
    TIFF data); ``F`` is taken as [0, 1] when its maximum is at most 1, else as [0, 255].
    """
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    arr = np.clip(arr.astype(np.float64), 0, 65535)
    return np.rint(arr / 257.0).astype(np.uint8)


@dataclass
class ImageTransform:
    """OpenCLIP-style eval preprocessing: PIL image -> normalised float tensor ``(3, S, S)``.

    ``resize_mode="shortest"`` scales the shorter side to ``image_size`` (bicubic) and center
    crops, like ``Resize(image_size) + CenterCrop(image_size)``; ``"squash"`` resizes straight to
    ``image_size x image_size`` ignoring the aspect ratio.

    Attributes:
        image_size: output side length in pixels.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel divisor.
        resize_mode: ``"shortest"`` or ``"squash"``.
    """

    image_size: int
    _: KW_ONLY
    mean: Sequence[float] = CLIP_MEAN
    std: Sequence[float] = CLIP_STD
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
        self.mean = _three_floats("mean", self.mean)
        self.std = _three_floats("std", self.std)
        if not all(s > 0 for s in self.std):
            raise ValueError(f"std must be > 0 in every channel, got {self.std!r}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {self.resize_mode!r}")

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Resize, crop and normalise one image (any mode; converted to RGB if needed)."""
        return self.normalize(torch.from_numpy(self.pixels(img)))

    def pixels(self, img: Image.Image) -> np.ndarray:
        """The resized and cropped RGB pixels, ``(S, S, 3)`` uint8: what an image cache stores."""
        img = self.resize(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only arrays

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels ``(..., S, S, 3)`` -> normalised float32 ``(..., 3, S, S)``.

        The same float32 operations whether applied to one image or a cached batch, so both give
        bit-identical tensors.
        """
        x = (pixels.to(torch.float32) / 255.0).movedim(-1, -3)  # (..., 3, S, S)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((x - mean) / std).contiguous()

    def resize(self, img: Image.Image) -> Image.Image:
        """Return the resized and cropped ``image_size x image_size`` PIL image."""
        size = self.image_size
        if img.size == (size, size):
            return img
        if self.resize_mode == "squash":
            return img.resize((size, size), Image.Resampling.BICUBIC)
        return img.resize((size, size), Image.Resampling.BICUBIC, box=self._crop_box(*img.size))

    def _crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Source region that the center crop of the shorter-side resize would show.

        Resizing only this box (Pillow still reads neighbouring pixels for the filter support)
        gives the same pixels as resize-then-crop, without materialising a huge intermediate
        image for extreme aspect ratios (a 100000x1 image would otherwise become 22400000x224).
        """
        size = self.image_size
        # torchvision's Resize(int): shorter side -> size, longer side truncated with int().
        if width <= height:
            new_w, new_h = size, int(size * height / width)
        else:
            new_w, new_h = int(size * width / height), size
        # torchvision's CenterCrop offsets.
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        sx, sy = width / new_w, height / new_h
        return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


def _three_floats(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 numbers, got {values!r}") from None
    if len(out) != 3 or not all(np.isfinite(out)):
        raise ValueError(f"{name} must be 3 finite numbers, got {values!r}")
    return out  # type: ignore[return-value]


def pil_batch_to_tensor(images: Sequence[Image.Image], transform: ImageTransform) -> torch.Tensor:
    """Apply ``transform`` to each image and stack into ``(B, 3, S, S)`` (``B`` may be 0)."""
    if not images:
        size = transform.image_size
        return torch.empty((0, 3, size, size), dtype=torch.float32)
    return torch.stack([transform(img) for img in images])
