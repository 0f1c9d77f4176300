"""The hostile-image corpus through coembed.transforms.load_image and decode_image_bytes.

ok cases decode to RGB with the expected size, orientation and a known pixel; reject cases raise
ImageLoadError naming the path with the expected reason category; the bombs are refused from the
header, fast and without allocating their pixels. The unreadable file is read by an unprivileged
process (setpriv to nobody), since root reads mode-000 files.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from coembed.transforms import ImageLoadError, decode_image_bytes, load_image
from tests.reliability.hostile_images import OK, UNREADABLE, Case, write_corpus

ROOT_ONLY = {UNREADABLE}  # cases whose expected outcome needs an unprivileged reader
NOT_BYTES = {"broken_link.png", "loop_a.png", "loop_b.png", "folder.jpg", "zero_bytes.png"}  # no content to upload


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    return write_corpus(tmp_path_factory.mktemp("hostile"))


def assert_loaded(img, case: Case) -> None:
    assert img.mode == "RGB" and img.size == case.size
    if case.pixel:
        (x, y), want = case.pixel
        got = img.getpixel((x, y))
        assert max(abs(a - b) for a, b in zip(got, want)) <= 8, (got, want)


def category(reason: str) -> str:
    return reason.split(":", 1)[0]


def test_corpus_is_small_and_complete(corpus: dict[str, Case]) -> None:
    assert len(corpus) >= 26
    sizes = [c.path.lstat().st_size for c in corpus.values() if c.path.is_file() and not c.path.is_symlink()]
    assert max(sizes) < 16_000  # the bombs are tiny on disk


def test_load_image_every_case(corpus: dict[str, Case]) -> None:
    for name, case in corpus.items():
        if name in ROOT_ONLY and os.geteuid() == 0:
            continue  # root reads it: checked unprivileged below
        if case.outcome == OK:
            assert_loaded(load_image(case.path), case)
            continue
        with pytest.raises(ImageLoadError) as info:
            load_image(case.path)
        assert category(info.value.reason) == case.reason, (name, info.value.reason)
        assert str(case.path) in str(info.value) and info.value.path == str(case.path)


def test_load_image_accepts_bytes_paths(corpus: dict[str, Case]) -> None:
    """The non-UTF-8 name given as the raw bytes the file system holds."""
    case = next(c for n, c in corpus.items() if n.startswith("caf"))
    assert os.fsencode(case.path).endswith(b"caf\xe9.png")
    assert_loaded(load_image(os.fsencode(case.path)), case)


def test_decode_image_bytes_every_case(corpus: dict[str, Case]) -> None:
    for name, case in corpus.items():
        if name in NOT_BYTES:
            continue
        data = case.path.read_bytes()  # root reads the unreadable file: its bytes are a good image
        if case.outcome == OK or name in ROOT_ONLY:
            img = decode_image_bytes(data, name="upload")
            assert img.mode == "RGB" and (name in ROOT_ONLY or img.size == case.size)
            continue
        with pytest.raises(ImageLoadError) as info:
            decode_image_bytes(data, name=f"upload:{name}")
        assert category(info.value.reason) == case.reason and f"upload:{name}" in str(info.value)
    with pytest.raises(ImageLoadError, match="upload: empty file"):
        decode_image_bytes(b"")


def test_bombs_refused_from_header_fast_and_small(corpus: dict[str, Case]) -> None:
    """30000x30000 RGB would be 2.7 GB decoded; 8000x8000 192 MB. Both must be refused in
    milliseconds with no growth of the peak resident memory."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    for name in ("bomb_30000x30000.png", "bomb_8000x8000.png"):
        data = corpus[name].path.read_bytes()
        start = time.perf_counter()
        with pytest.raises(ImageLoadError, match="too many pixels"):
            load_image(corpus[name].path)
        with pytest.raises(ImageLoadError, match="too many pixels"):
            decode_image_bytes(data)
        assert time.perf_counter() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 50_000
    with pytest.raises(ImageLoadError, match=r"8000x8000 = 64000000 > max_pixels=50000000"):
        load_image(corpus["bomb_8000x8000.png"].path)


def test_max_pixels_is_the_callers_limit(corpus: dict[str, Case]) -> None:
    with pytest.raises(ImageLoadError, match="too many pixels: 10000x1 = 10000 > max_pixels=9999"):
        load_image(corpus["wide_10000x1.png"].path, max_pixels=9999)
    assert load_image(corpus["wide_10000x1.png"].path, max_pixels=10000).size == (10000, 1)


@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0, reason="needs root and setpriv to drop privileges")
def test_unreadable_file_as_unprivileged_user() -> None:
    """A real EACCES: the file is mode 000 and the reader runs as nobody (setpriv)."""
    folder = Path(tempfile.mkdtemp(prefix="coembed-unreadable-"))
    try:
        os.chmod(folder, 0o755)
        cases = write_corpus(folder)
        script = ("import sys\nfrom coembed.transforms import ImageLoadError, load_image\n"
                  "try:\n    load_image(sys.argv[1])\nexcept ImageLoadError as e:\n    print(e)\n")
        run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script,
                              str(cases[UNREADABLE].path)], capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == f"cannot load image {cases[UNREADABLE].path}: permission denied"
    finally:
        shutil.rmtree(folder)
