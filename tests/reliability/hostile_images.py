"""A named corpus of hostile image files, written deterministically with Pillow, numpy and zlib.

:func:`write_corpus` writes one file (or symlink / folder) per case into a folder and returns
``{name: Case}``; each case says whether :func:`coembed.transforms.load_image` should accept it
(``"ok"``: RGB, the expected size, and for some a known pixel) or reject it with a reason category
(the text before the colon of ``ImageLoadError.reason``, as :class:`SkipReport` counts it).

Every file is small (the largest is the 10000x1 strip, a few hundred bytes compressed); the
decompression bomb is a 1x1 PNG whose IHDR was patched to claim 30000x30000 (CRC fixed).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

OK = "ok"
REJECT = "reject"
# The unreadable case: readable by root, so only a test that drops privileges (or fakes EACCES)
# can see it rejected. Its expected outcome is what an unprivileged reader gets.
UNREADABLE = "unreadable.png"
NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # 'caf\udce9.png': a surrogate-escaped str, valid on Linux
NON_UTF8_BAD = os.fsdecode(b"bad\xff.jpg")  # a non-UTF-8 name on a file that is not an image: the name lands in skip reports
LONG_NAME = "L" * 251 + ".png"  # 255 bytes: the longest name ext4 allows
RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


@dataclass(frozen=True)
class Case:
    """One hostile file.

    Attributes:
        path: where it was written.
        outcome: ``"ok"`` or ``"reject"``.
        reason: for ``"reject"``, the reason category ``load_image`` reports.
        size: for ``"ok"``, the ``(width, height)`` of the loaded (rotated) image.
        pixel: for some ``"ok"`` cases, ``((x, y), rgb)`` the loaded image must show (within 8 levels).
        listed: whether a recursive folder walk (``iter_images``) lists it as an image file.
    """

    path: Path
    outcome: str
    reason: str = ""
    size: tuple[int, int] | None = None
    pixel: tuple[tuple[int, int], tuple[int, int, int]] | None = None
    listed: bool = True


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def control_image(width: int = 48, height: int = 32) -> Image.Image:
    """A good RGB image: left half red, right half blue."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = RED
    arr[:, width // 2:] = BLUE
    return Image.fromarray(arr)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A real 1x1 PNG whose IHDR is patched to claim ``width x height`` (CRC recomputed): 70 bytes."""
    data = bytearray(_png(Image.new("RGB", (1, 1), RED)))
    ihdr = 8  # after the signature: length(4) + b"IHDR"(4) + 13 bytes of data + crc(4)
    data[ihdr + 8: ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21: ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4: ihdr + 21])))
    return bytes(data)


def rgb16_png(width: int = 8, height: int = 6) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one): mid grey 0x8080."""
    row = b"\x00" + b"\x80\x80" * 3 * width  # filter byte 0, then R, G, B as big-endian uint16
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(row * height))
            + _chunk(b"IEND", b""))


def exif_rotated_jpeg() -> bytes:
    """Stored 40x20 (red left half, blue right half) with EXIF orientation 6 (rotate 90 deg clockwise
    to display): shown 20x40 with red on top."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(control_image(40, 20), exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [Image.new("P", (16, 16), 0), Image.new("P", (16, 16), 1)]
    palette = [*RED, *BLUE] + [0] * (256 * 3 - 6)
    for f in frames:
        f.putpalette(palette)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def palette_trns_png() -> bytes:
    """A palette PNG whose index 0 is fully transparent (tRNS): the left half must come out white."""
    img = Image.new("P", (16, 8), 1)
    img.putpalette([0, 0, 0, *BLUE] + [0] * (256 * 3 - 6))
    img.paste(0, (0, 0, 8, 8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


def _alpha(mode: str) -> bytes:
    """LA or RGBA, 16x8: left half fully transparent, right half opaque (black for LA, blue for RGBA)."""
    color = (0, 255) if mode == "LA" else (*BLUE, 255)
    img = Image.new(mode, (16, 8), color)
    img.paste((0, 0) if mode == "LA" else (0, 0, 0, 0), (0, 0, 8, 8))
    return _png(img)


def _files() -> dict[str, tuple[bytes, Case]]:
    """Regular files: name -> (bytes, case with a placeholder path)."""
    good_jpeg = _jpeg(control_image(64, 64))
    good_png = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    p = Path()
    cmyk = Image.new("CMYK", (24, 16), (0, 255, 255, 0))  # red in CMYK
    return {
        "control.png": (_png(control_image()), Case(p, OK, size=(48, 32), pixel=((2, 2), RED))),
        "zero_bytes.png": (b"", Case(p, REJECT, "empty file")),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], Case(p, REJECT, "truncated or corrupt")),
        "truncated.png": (good_png[: len(good_png) // 2], Case(p, REJECT, "truncated or corrupt")),
        "text_named.jpg": (b"this is a text file, not a JPEG\n" * 4, Case(p, REJECT, "not an image")),
        "random_bytes.png": (np.random.default_rng(1).bytes(2048), Case(p, REJECT, "not an image")),
        "one_pixel.png": (_png(Image.new("RGB", (1, 1), RED)), Case(p, OK, size=(1, 1), pixel=((0, 0), RED))),
        "wide_10000x1.png": (_png(Image.new("RGB", (10000, 1), BLUE)), Case(p, OK, size=(10000, 1), pixel=((9999, 0), BLUE))),
        "tall_1x10000.png": (_png(Image.new("RGB", (1, 10000), RED)), Case(p, OK, size=(1, 10000), pixel=((0, 9999), RED))),
        "bomb_30000x30000.png": (bomb_png(), Case(p, REJECT, "too many pixels")),  # over Pillow's own limit too
        "bomb_8000x8000.png": (bomb_png(8000, 8000), Case(p, REJECT, "too many pixels")),  # only over max_pixels
        "cmyk.jpg": (_jpeg(cmyk), Case(p, OK, size=(24, 16), pixel=((12, 8), RED))),
        "gray16.png": (_png(Image.fromarray(np.full((8, 12), 0x8080, np.uint16))), Case(p, OK, size=(12, 8), pixel=((3, 3), (128, 128, 128)))),
        "rgb16.png": (rgb16_png(), Case(p, OK, size=(8, 6), pixel=((1, 1), (128, 128, 128)))),
        "palette_trns.png": (palette_trns_png(), Case(p, OK, size=(16, 8), pixel=((2, 2), WHITE))),
        "la_alpha.png": (_alpha("LA"), Case(p, OK, size=(16, 8), pixel=((2, 2), WHITE))),
        "rgba_alpha.png": (_alpha("RGBA"), Case(p, OK, size=(16, 8), pixel=((2, 2), WHITE))),
        "exif_rot6.jpg": (exif_rotated_jpeg(), Case(p, OK, size=(20, 40), pixel=((10, 5), RED))),
        "animated.gif": (animated_gif(), Case(p, OK, size=(16, 16), pixel=((8, 8), RED))),
        UNREADABLE: (_png(control_image()), Case(p, REJECT, "permission denied")),
        LONG_NAME: (_png(control_image()), Case(p, OK, size=(48, 32), pixel=((2, 2), RED))),
        NON_UTF8: (_png(control_image()), Case(p, OK, size=(48, 32), pixel=((2, 2), RED))),
        NON_UTF8_BAD: (b"GIF89a" + bytes(10), Case(p, REJECT, "not an image")),
    }


def write_corpus(folder: str | os.PathLike) -> dict[str, Case]:
    """Write every case into ``folder`` (created); returns ``{name: Case}`` keyed by file name (str)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cases: dict[str, Case] = {}
    for name, (data, case) in _files().items():
        path = folder / name
        path.write_bytes(data)
        cases[name] = Case(path, case.outcome, case.reason, case.size, case.pixel)
    os.chmod(folder / UNREADABLE, 0)
    # Relative targets: the corpus folder may be copied or moved.
    os.symlink("no_such_target.png", folder / "broken_link.png")
    cases["broken_link.png"] = Case(folder / "broken_link.png", REJECT, "broken symlink")
    os.symlink("loop_b.png", folder / "loop_a.png")
    os.symlink("loop_a.png", folder / "loop_b.png")
    for name in ("loop_a.png", "loop_b.png"):
        cases[name] = Case(folder / name, REJECT, "cannot access file")
    (folder / "folder.jpg").mkdir()
    cases["folder.jpg"] = Case(folder / "folder.jpg", REJECT, "not an image", listed=False)
    return cases


def ok_names(cases: dict[str, Case]) -> set[str]:
    return {n for n, c in cases.items() if c.outcome == OK}


def reject_names(cases: dict[str, Case]) -> set[str]:
    return {n for n, c in cases.items() if c.outcome == REJECT}


def deny_reading(monkeypatch, names: set[str]) -> None:
    """Make opening a file called one of ``names`` fail as it does for a user without read permission
    (``PermissionError`` with errno EACCES), in this process and in DataLoader workers forked from it.

    We run as root, which reads mode-000 files; tests that run the code in-process fake the OS
    answer here (``test_images_loader`` checks the real one as an unprivileged user).
    """
    import builtins
    import errno

    real_open, real_os_open = builtins.open, os.open
    denied = {os.fsencode(n) for n in names}

    def check(file) -> None:
        if isinstance(file, (str, bytes, os.PathLike)) and os.path.basename(os.fsencode(file)) in denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(file))

    def fake_open(file, *args, **kwargs):
        check(file)
        return real_open(file, *args, **kwargs)

    def fake_os_open(path, *args, **kwargs):
        check(path)
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)


def expected_skips(cases: dict[str, Case], *, listed_only: bool = False) -> dict[str, str]:
    """``{name: reason category}`` of the cases an entry point must skip."""
    return {n: c.reason for n, c in cases.items() if c.outcome == REJECT and (c.listed or not listed_only)}
