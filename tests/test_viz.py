"""Tests for coembed.viz: every plot writes a real, non-blank PNG and bad input fails clearly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coembed.errors import DataError
from coembed.viz import (
    RetrievalRow,
    _ema,
    _read_metrics,
    plot_retrieval_grid,
    plot_training_curves,
    plot_zeroshot_confusion,
)

GREEN = (44, 160, 44)  # the frame colours used by viz for correct / wrong results
RED = (214, 39, 40)
PLACEHOLDER_GREY = (199, 199, 199)


def _write_metrics(path: Path, steps: int = 60, val_every: int = 10, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = []
    for step in range(1, steps + 1):
        loss = 4.0 * math.exp(-step / 25) + 0.1 * (step % 3)
        lines.append(json.dumps({"step": step, "epoch": step // 20, "loss": loss, "lr": 5e-4 * min(1.0, step / 10),
                                 "logit_scale": 14.3 + step * 0.2, "grad_norm": 1.0, "samples_per_s": 300.0}))
        if val_every and step % val_every == 0:
            lines.append(json.dumps({"step": step, "val_loss": 3.5 * math.exp(-step / 30),
                                     "val_t2i_r1": step / (steps + 5), "val_i2t_r1": step / (steps + 15)}))
    path.write_text("\n".join(lines + list(extra_lines)) + "\n")
    return path


def _open_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _count_colour(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 6) -> int:
    return int((np.abs(pixels.astype(int) - np.array(rgb)).max(axis=-1) <= tol).sum())


def _save_image(path: Path, rgb: tuple[int, int, int], size: int = 64) -> Path:
    img = Image.new("RGB", (size, size), rgb)
    # A checkerboard corner makes nearest-neighbour upscaling observable (no blended colours).
    for x in range(size // 2):
        for y in range(size // 2):
            if (x // 4 + y // 4) % 2:
                img.putpixel((x, y), (0, 0, 0))
    img.save(path)
    return path


# --------------------------------------------------------------------------- training curves


def test_training_curves_writes_nonblank_png(tmp_path):
    metrics = _write_metrics(tmp_path / "metrics.jsonl")
    out = plot_training_curves(metrics, tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    pixels = _open_rgb(out)
    assert pixels.shape[1] == pytest.approx(13 * 150, rel=0.05)
    assert 500 <= pixels.shape[0] <= 800
    assert pixels.std() > 10
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temporary file behind


def test_training_curves_without_validation_lines(tmp_path):
    metrics = _write_metrics(tmp_path / "metrics.jsonl", val_every=0)
    assert _open_rgb(plot_training_curves(metrics, tmp_path / "c.png")).std() > 10


def test_training_curves_skips_unparsable_lines(tmp_path):
    metrics = _write_metrics(tmp_path / "metrics.jsonl", extra_lines=("not json", "[1, 2]", '{"step": "x", "loss": 1}',
                                                                     '{"step": 61, "loss": 0.'))
    assert plot_training_curves(metrics, tmp_path / "c.png").exists()


def test_read_metrics_sorts_by_step_and_drops_non_finite(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join([
        '{"step": 3, "loss": 1.5, "lr": 0.1}',
        '{"step": 1, "loss": 2.0, "lr": 0.3}',
        '{"step": 2, "loss": NaN, "lr": 0.2}',
        '{"step": 2, "val_loss": 1.9, "val_t2i_r1": 0.5}',
        "garbage",
    ]))
    series = _read_metrics(path)
    assert (series["loss"].steps, series["loss"].values) == ([1.0, 3.0], [2.0, 1.5])
    assert series["lr"].values == [0.3, 0.2, 0.1]
    assert (series["val_t2i_r1"].steps, series["val_t2i_r1"].values) == ([2.0], [0.5])
    assert series["val_i2t_r1"].steps == []


def test_ema_matches_weighted_average_reference():
    values = [5.0, 3.0, 4.0, 1.0, 2.0, 0.5, 0.7, 0.2, 0.9, 0.1]
    got = _ema(values)
    span = min(50.0, max(2.0, len(values) / 10))
    alpha = 2 / (span + 1)
    for i in range(len(values)):
        # Debiased EMA = average of the values seen so far with geometrically decaying weights.
        weights = [(1 - alpha) ** (i - j) for j in range(i + 1)]
        expected = sum(w * v for w, v in zip(weights, values[: i + 1])) / sum(weights)
        assert got[i] == pytest.approx(expected)
    assert got[0] == values[0]


def test_training_curves_empty_file_raises_naming_file(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("")
    with pytest.raises(DataError, match="metrics.jsonl"):
        plot_training_curves(metrics, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_training_curves_validation_only_raises(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 10, "val_loss": 1.0, "val_t2i_r1": 0.1, "val_i2t_r1": 0.2}\nbroken line\n')
    with pytest.raises(DataError, match="no training lines"):
        plot_training_curves(metrics, tmp_path / "c.png")


def test_training_curves_missing_file_raises(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl"):
        plot_training_curves(tmp_path / "nope.jsonl", tmp_path / "c.png")


# --------------------------------------------------------------------------- retrieval grid


def _rows(tmp_path: Path) -> list[RetrievalRow]:
    blue = _save_image(tmp_path / "blue.png", (30, 60, 230))
    yellow = _save_image(tmp_path / "yellow.png", (240, 220, 20))
    return [
        RetrievalRow("a blue square above a yellow circle",
                     [(blue, 0.91, True), (yellow, 0.55, False), (blue, 0.2, True)]),
        RetrievalRow("a yellow thing " * 20, [(yellow, 0.8, True), (tmp_path / "does_not_exist.png", 0.1, False)]),
    ]


def test_retrieval_grid_writes_nonblank_png(tmp_path):
    out = plot_retrieval_grid(_rows(tmp_path), tmp_path / "grid.png", thumb=96)
    pixels = _open_rgb(out)
    assert pixels.std() > 10
    assert pixels.shape[0] >= 2 * 96 and pixels.shape[1] >= 2 * 96 + 150
    green, red = _count_colour(pixels, GREEN), _count_colour(pixels, RED)
    assert red > 2 * 4 * 90  # two red frames, each ~4 sides x thumb x 3 px
    assert 1.3 < green / red < 1.7  # three correct results, two wrong ones


def test_retrieval_grid_upscales_with_nearest_neighbour(tmp_path):
    out = plot_retrieval_grid(_rows(tmp_path)[:1], tmp_path / "grid.png", thumb=128)
    pixels = _open_rgb(out).astype(float)
    blue = np.array([30.0, 60.0, 230.0])
    # Upscaled 2x with no smoothing, the 3/4 of the image that is flat blue stays exactly blue ...
    assert (np.abs(pixels - blue).max(axis=-1) == 0).sum() > 0.6 * 128 * 128
    # ... and no pixel is a blend t * blue of the blue squares and the black checkerboard squares.
    t = (pixels @ blue) / (blue @ blue)
    on_blue_black_line = np.abs(pixels - t[..., None] * blue).max(axis=-1) < 8
    assert (on_blue_black_line & (t > 0.15) & (t < 0.85)).sum() == 0


def test_retrieval_grid_missing_image_gets_placeholder(tmp_path):
    out = plot_retrieval_grid(_rows(tmp_path), tmp_path / "grid.png", thumb=96)
    assert _count_colour(_open_rgb(out), PLACEHOLDER_GREY, tol=2) > 0.5 * 96 * 96


def test_retrieval_grid_unreadable_image_gets_placeholder(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = plot_retrieval_grid([RetrievalRow("q", [(bad, 0.3, True)])], tmp_path / "grid.png")
    assert _count_colour(_open_rgb(out), PLACEHOLDER_GREY, tol=2) > 0.5 * 96 * 96


def test_retrieval_grid_rejects_empty_rows(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        plot_retrieval_grid([], tmp_path / "grid.png")


def test_retrieval_grid_rejects_tiny_thumb(tmp_path):
    with pytest.raises(ValueError, match="thumb"):
        plot_retrieval_grid(_rows(tmp_path), tmp_path / "grid.png", thumb=4)


# --------------------------------------------------------------------------- confusion matrix


def test_confusion_writes_nonblank_png(tmp_path):
    confusion = np.array([[8, 1, 0], [2, 5, 3], [0, 0, 10]])
    out = plot_zeroshot_confusion(confusion, ["circle", "square", "triangle"], tmp_path / "cm.png", "shapes")
    pixels = _open_rgb(out)
    assert pixels.std() > 10
    assert min(pixels.shape[:2]) >= 500


@pytest.mark.parametrize(("confusion", "names", "match"), [
    (np.zeros((2, 3)), ["a", "b"], "square"),
    (np.zeros((3, 3)), ["a", "b"], "2 classnames"),
    (np.array([[1, -1], [0, 2]]), ["a", "b"], "negative"),
])
def test_confusion_rejects_bad_input(tmp_path, confusion, names, match):
    with pytest.raises(ValueError, match=match):
        plot_zeroshot_confusion(confusion, names, tmp_path / "cm.png")


def test_import_does_not_need_matplotlib():
    code = "import sys, coembed.viz; assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plot_explanation_writes_a_png(tmp_path) -> None:
    from PIL import Image as PILImage

    from coembed.viz import plot_explanation

    pixels = np.zeros((32, 32, 3), dtype=np.uint8)
    heat = np.zeros((32, 32))
    heat[4:8, 20:24] = 1.0
    out = plot_explanation(pixels, heat, "the large red circle", tmp_path / "a" / "map.png", peak=(22.0, 6.0), subtitle="occlusion")
    with PILImage.open(out) as png:
        assert png.format == "PNG" and png.width > 2 * png.height / 1.5
    with pytest.raises(ValueError, match="same grid"):
        plot_explanation(pixels, heat[:16], "x", tmp_path / "b.png")
    assert not (tmp_path / "b.png").exists()
