"""``coembed explain`` through the installed console script: a valid PNG and the peak on stdout, one
clear line naming the argument for each user error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ENTRY_POINT = Path(sys.executable).parent / "coembed"


def coembed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ENTRY_POINT), "explain", *map(str, args)], capture_output=True, text=True, timeout=180)


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coembed explain: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def image(shapes_data: Path) -> Path:
    return sorted((shapes_data / "test" / "images").glob("*.png"))[0]


def test_writes_a_png_and_prints_the_peak(tiny_checkpoint: Path, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "map.png"
    proc = coembed("--checkpoint", tiny_checkpoint, image, "the large red circle", "--out", out, "--window", "16", "--stride", "8")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "peak at x=" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as png:
        png.verify()
    with Image.open(out) as png:
        assert png.width > 300 and png.height > 200


def test_json_output(tiny_checkpoint: Path, image: Path, tmp_path: Path) -> None:
    out = tmp_path / "map.png"
    proc = coembed("--checkpoint", tiny_checkpoint, image, "a small blue star", "--out", out, "--json", "--method", "occlusion")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["method"] == "occlusion" and info["out"] == str(out) and out.is_file()
    assert 0 < info["peak"]["x"] < 64 and 0 < info["peak"]["y"] < 64 and 0 < info["peak"]["x_frac"] < 1


def test_missing_image(tiny_checkpoint: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    assert_user_error(coembed("--checkpoint", tiny_checkpoint, missing, "a red circle"), str(missing))


def test_unreadable_checkpoint(image: Path, tmp_path: Path) -> None:
    broken = tmp_path / "ckpt"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert_user_error(coembed("--checkpoint", broken, image, "a red circle"), str(broken))
    assert_user_error(coembed("--checkpoint", tmp_path / "absent", image, "a red circle"), "absent")


def test_empty_text(tiny_checkpoint: Path, image: Path) -> None:
    assert_user_error(coembed("--checkpoint", tiny_checkpoint, image, "  "), "TEXT")


def test_gradcam_needs_a_fusion_model(tiny_checkpoint: Path, image: Path, tmp_path: Path) -> None:
    proc = coembed("--checkpoint", tiny_checkpoint, image, "a red circle", "--method", "gradcam", "--out", tmp_path / "x.png")
    assert_user_error(proc, "gradcam", "fusion")
    assert not (tmp_path / "x.png").exists()


def test_window_larger_than_the_image(tiny_checkpoint: Path, image: Path, tmp_path: Path) -> None:
    assert_user_error(coembed("--checkpoint", tiny_checkpoint, image, "a red circle", "--window", "65", "--out", tmp_path / "x.png"),
                      "window")
