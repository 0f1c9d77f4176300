"""Plots for training runs and evaluations: loss curves, retrieval grids, confusion matrices.

Matplotlib is part of the ``train`` extra, so it is imported inside the functions and the core
library imports without it. Figures are built with :class:`matplotlib.figure.Figure` and the Agg
canvas directly (no ``pyplot``), which keeps no global figure state and never needs a display.
Every function renders to memory and writes the PNG atomically, then returns its path.
"""

from __future__ import annotations

import io
import json
import math
import os
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from coembed.errors import DataError
from coembed.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["RetrievalRow", "new_figure", "plot_explanation", "plot_retrieval_grid", "plot_training_curves",
           "plot_zeroshot_confusion", "save_png"]

_CORRECT = "#2ca02c"
_WRONG = "#d62728"
_MISSING_GREY = 0.78


# --------------------------------------------------------------------------- shared helpers


def new_figure(width_in: float, height_in: float, dpi: int) -> Figure:
    """A pyplot-free figure attached to an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, out_png: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically (parent folders created)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    out = Path(out_png)
    atomic_write_bytes(out, buf.getvalue())
    return out


# --------------------------------------------------------------------------- training curves


@dataclass
class _Series:
    """Parallel step / value lists for one metric."""

    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, step: float, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.steps.append(step)
            self.values.append(float(value))


_TRAIN_KEYS = ("loss", "lr", "logit_scale")
_VAL_KEYS = ("val_loss", "val_t2i_r1", "val_i2t_r1")


def _read_metrics(path: Path) -> dict[str, _Series]:
    """Series per metric from ``metrics.jsonl``; lines that are not JSON objects with a step are skipped.

    A crash can leave the last line cut short, so unparsable lines are tolerated rather than fatal.
    """
    series = {key: _Series() for key in _TRAIN_KEYS + _VAL_KEYS}
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"cannot read metrics file {path}: {e.strerror or e}") from None
    records = [rec for rec in map(_parse_line, lines) if rec is not None]
    # Sorting keeps lines drawn in step order even if a resumed run appended out of order.
    for step, rec in sorted(records, key=lambda r: r[0]):
        for key, s in series.items():
            s.add(step, rec.get(key))
    return series


def _parse_line(line: str) -> tuple[float, dict] | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    step = rec.get("step")
    if not isinstance(step, (int, float)) or isinstance(step, bool) or not math.isfinite(step):
        return None
    return float(step), rec


def _ema(values: Sequence[float]) -> np.ndarray:
    """Bias-corrected exponential moving average whose window scales with the run length."""
    span = min(50.0, max(2.0, len(values) / 10))
    alpha = 2.0 / (span + 1.0)
    out = np.empty(len(values))
    avg, weight = 0.0, 0.0
    for i, v in enumerate(values):
        avg = (1 - alpha) * avg + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = avg / weight  # debiasing: early points are not pulled towards the zero start
    return out


def plot_training_curves(metrics_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Plot loss, validation recall and learning rate / temperature from a training run.

    Args:
        metrics_path: ``metrics.jsonl`` written by training (training lines have ``loss``, ``lr``,
            ``logit_scale``...; validation lines have ``val_loss``, ``val_t2i_r1``, ``val_i2t_r1``).
        out_png: where to write the PNG (parent folders are created).

    Returns:
        The path of the written PNG.

    Raises:
        DataError: the file cannot be read or holds no training lines.
    """
    from matplotlib.ticker import MaxNLocator

    path = Path(metrics_path)
    series = _read_metrics(path)
    if not series["loss"].steps:
        raise DataError(f"metrics file {path} has no training lines (JSON objects with 'step' and 'loss')")
    fig = new_figure(13.0, 4.2, dpi=150)
    ax_loss, ax_recall, ax_lr = fig.subplots(1, 3, sharex=True)
    _draw_loss_panel(ax_loss, series)
    _draw_recall_panel(ax_recall, series)
    _draw_schedule_panel(ax_lr, series)
    # The x axis is shared, so these apply to all panels; steps are whole numbers.
    ax_loss.xaxis.set_major_locator(MaxNLocator(nbins=7, integer=True))
    steps = [step for s in series.values() for step in s.steps]
    first, last = min(steps), max(steps)
    if last - first < 2:  # a one-step run would get fractional ticks around a single point
        ax_loss.set_xlim(first - 1, last + 1)
    fig.suptitle(f"Training run: {path.parent.name or path.name}", fontsize=11)
    fig.tight_layout()
    return save_png(fig, out_png)


def _draw_loss_panel(ax: Axes, series: dict[str, _Series]) -> None:
    train, val = series["loss"], series["val_loss"]
    marker = "o" if len(train.steps) <= 20 else None  # a line of one or two points would be invisible
    ax.plot(train.steps, train.values, color="tab:blue", alpha=0.25, linewidth=0.8, label="train (raw)")
    ax.plot(train.steps, _ema(train.values), color="tab:blue", linewidth=1.8, marker=marker, markersize=3.5,
            label="train (EMA)")
    if val.steps:
        ax.plot(val.steps, val.values, color="tab:orange", marker="o", markersize=3.5, linewidth=1.5,
                label="validation")
    ax.set(title="(a) Contrastive loss", xlabel="step", ylabel="loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")


def _draw_recall_panel(ax: Axes, series: dict[str, _Series]) -> None:
    t2i, i2t = series["val_t2i_r1"], series["val_i2t_r1"]
    ax.set(title="(b) Validation recall@1", xlabel="step", ylabel="recall@1", ylim=(0.0, 1.0))
    ax.grid(True, alpha=0.3)
    if not (t2i.steps or i2t.steps):
        ax.text(0.5, 0.5, "no validation data", transform=ax.transAxes, ha="center", va="center", color="0.45")
        return
    ax.plot(t2i.steps, t2i.values, marker="o", markersize=3.5, color="tab:green", label="text → image")
    ax.plot(i2t.steps, i2t.values, marker="s", markersize=3.5, color="tab:purple", label="image → text")
    ax.legend(fontsize=8, loc="upper left")


def _draw_schedule_panel(ax: Axes, series: dict[str, _Series]) -> None:
    lr, scale = series["lr"], series["logit_scale"]
    # The power of ten goes into the axis label: matplotlib's offset text would sit on the title.
    exponent = _decimal_exponent(max(lr.values, default=0.0, key=abs))
    ax.set(title="(c) Learning rate and logit scale", xlabel="step")
    ax.set_ylabel(f"learning rate (×1e{exponent})" if exponent else "learning rate", color="tab:blue")
    marker = "o" if len(lr.steps) <= 20 else None
    ax.plot(lr.steps, [v / 10.0**exponent for v in lr.values], color="tab:blue", linewidth=1.5, marker=marker,
            markersize=3.5, label="learning rate")
    ax.grid(True, alpha=0.3)
    twin = ax.twinx()
    twin.set_ylabel("logit scale (1 / temperature)", color="tab:red")
    twin.plot(scale.steps, scale.values, color="tab:red", linewidth=1.5, marker=marker, markersize=3.5,
              label="logit scale")
    handles = ax.get_lines() + twin.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="center right")


def _decimal_exponent(value: float) -> int:
    """Power of ten that brings ``value`` into [1, 10); 0 for 0 and for values already near 1."""
    if value == 0 or 1e-2 <= abs(value) < 1e3:
        return 0
    return math.floor(math.log10(abs(value)))


# --------------------------------------------------------------------------- retrieval grid


@dataclass
class RetrievalRow:
    """One text query and its top-ranked images.

    Attributes:
        query: the query text.
        results: ``(image_path, score, is_correct)`` per retrieved image, best first.
    """

    query: str
    results: list[tuple[str | Path, float, bool]]


# Grid geometry in pixels; the figure is drawn at 100 dpi so 1 unit = 1 output pixel and
# thumbnails are shown without resampling (they are pre-scaled with nearest neighbour).
_GRID_DPI = 100
_PAD = 10
_TEXT_W = 210
_SCORE_H = 20
_HEADER_H = 24
_FONT_PT = 9.5
_LINE_PX = 15  # line height for _FONT_PT at _GRID_DPI with matplotlib's default 1.2 spacing
_WRAP = 28


def plot_retrieval_grid(rows: Sequence[RetrievalRow], out_png: str | os.PathLike, *, thumb: int = 96) -> Path:
    """Draw text-to-image retrieval results: one row per query, its top images to the right.

    Each image has its score underneath and a green (correct) or red (wrong) frame; the score
    label also carries a check or cross mark so the grid reads without colour. Images that are
    missing or unreadable are shown as a grey "missing" placeholder.

    Args:
        rows: queries and their ranked results.
        out_png: where to write the PNG (parent folders are created).
        thumb: thumbnail side in output pixels.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: ``rows`` is empty or ``thumb`` is below 16.
    """
    if not rows:
        raise ValueError("plot_retrieval_grid: rows is empty; nothing to plot")
    if thumb < 16:
        raise ValueError(f"plot_retrieval_grid: thumb must be >= 16 pixels, got {thumb}")
    k = max(1, max(len(r.results) for r in rows))
    cell_w, row_h = thumb + _PAD, thumb + _SCORE_H + _PAD
    width = _PAD + _TEXT_W + k * cell_w + _PAD
    height = _HEADER_H + len(rows) * row_h + _PAD
    fig = new_figure(width / _GRID_DPI, height / _GRID_DPI, dpi=_GRID_DPI)
    geom = _GridGeometry(width, height, thumb, cell_w, row_h)
    _draw_grid_header(fig, geom, k)
    cache: dict[str, np.ndarray] = {}
    for r, row in enumerate(rows):
        _draw_query_text(fig, geom, r, row.query)
        for c, (image, score, correct) in enumerate(row.results):
            _draw_thumbnail(fig, geom, r, c, _thumbnail(image, thumb, cache), float(score), bool(correct))
    return save_png(fig, out_png, facecolor="white")


@dataclass(frozen=True)
class _GridGeometry:
    """Pixel layout of the retrieval grid; converts pixel boxes (origin top left) to figure fractions."""

    width: int
    height: int
    thumb: int
    cell_w: int
    row_h: int

    def rect(self, x: float, y_top: float, w: float, h: float) -> list[float]:
        return [x / self.width, 1 - (y_top + h) / self.height, w / self.width, h / self.height]

    def image_x(self, col: int) -> int:
        return _PAD + _TEXT_W + col * self.cell_w

    def row_top(self, row: int) -> int:
        return _HEADER_H + row * self.row_h


def _draw_grid_header(fig: Figure, g: _GridGeometry, k: int) -> None:
    y = 1 - (_HEADER_H * 0.55) / g.height
    fig.text(_PAD / g.width, y, "query", fontsize=_FONT_PT, fontweight="bold", va="center")
    for c in range(k):
        x = (g.image_x(c) + g.thumb / 2) / g.width
        fig.text(x, y, f"#{c + 1}", fontsize=_FONT_PT, fontweight="bold", ha="center", va="center")


def _draw_query_text(fig: Figure, g: _GridGeometry, row: int, query: str) -> None:
    max_lines = max(1, (g.thumb + _SCORE_H) // _LINE_PX)
    lines = textwrap.wrap(" ".join(query.split()), _WRAP) or ["(empty query)"]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: _WRAP - 1].rstrip() + "…"
    top = g.row_top(row)
    fig.text(_PAD / g.width, 1 - top / g.height, "\n".join(lines), fontsize=_FONT_PT, va="top", ha="left",
             linespacing=1.2)


def _draw_thumbnail(fig: Figure, g: _GridGeometry, row: int, col: int, pixels: np.ndarray | None,
                    score: float, correct: bool) -> None:
    x, top = g.image_x(col), g.row_top(row)
    ax = fig.add_axes(g.rect(x, top, g.thumb, g.thumb))
    if pixels is None:
        ax.imshow(np.full((g.thumb, g.thumb, 3), _MISSING_GREY), interpolation="nearest", vmin=0, vmax=1)
        # Sized to fit small thumbnails: "missing" is about 4 em wide.
        ax.text(0.5, 0.5, "missing", transform=ax.transAxes, ha="center", va="center",
                fontsize=min(_FONT_PT, 0.14 * g.thumb), color="0.3")
    else:
        ax.imshow(pixels, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    color = _CORRECT if correct else _WRONG
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(3.5)
    mark = "✓" if correct else "✗"
    fig.text((x + g.thumb / 2) / g.width, 1 - (top + g.thumb + _SCORE_H / 2 + 2) / g.height,
             f"{mark} {score:.3f}", fontsize=min(_FONT_PT - 0.5, 0.16 * g.cell_w), ha="center", va="center",
             color=color)


def _thumbnail(image: str | Path, size: int, cache: dict[str, np.ndarray]) -> np.ndarray | None:
    """``size``-square RGB uint8 thumbnail, or ``None`` when the image cannot be loaded."""
    from PIL import Image

    from coembed.transforms import load_image

    key = os.fspath(image)
    if key not in cache:
        try:
            img = load_image(key)
        except DataError:
            return None
        # Small synthetic images are blurry if upscaled smoothly; nearest keeps pixels crisp.
        resample = Image.Resampling.NEAREST if max(img.size) <= size else Image.Resampling.LANCZOS
        cache[key] = np.asarray(_pad_to_square(img).resize((size, size), resample))
    return cache[key]


def _pad_to_square(img):
    """Letterbox on white so non-square images keep their aspect ratio."""
    from PIL import Image

    side = max(img.size)
    if img.size == (side, side):
        return img
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return canvas


# --------------------------------------------------------------------------- confusion matrix


def plot_zeroshot_confusion(confusion: Any, classnames: Sequence[str], out_png: str | os.PathLike,
                            title: str = "Zero-shot confusion matrix") -> Path:
    """Heatmap of a zero-shot confusion matrix with the count in each cell.

    Args:
        confusion: ``(C, C)`` counts (numpy array, CPU tensor or nested lists); rows are true
            classes, columns predicted classes.
        classnames: the ``C`` class names, in matrix order.
        out_png: where to write the PNG (parent folders are created).
        title: figure title; overall accuracy is appended.

    Returns:
        The path of the written PNG.

    Raises:
        ValueError: ``confusion`` is not square, does not match ``classnames`` or has negative
            or non-finite entries.
    """
    from matplotlib.ticker import MaxNLocator

    counts = _check_confusion(confusion, classnames)
    n = len(classnames)
    side = min(16.0, max(4.5, 0.45 * n + 2.5))
    fig = new_figure(side + 1.2, side, dpi=150)
    ax = fig.add_subplot()
    im = ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1.0, counts.max()), interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="count")
    if np.array_equal(counts, np.round(counts)):
        cbar.locator = MaxNLocator(integer=True)  # counts: no 2.5 ticks
        cbar.update_ticks()
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=list(classnames), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=list(classnames))
    ax.set(xlabel="predicted class", ylabel="true class")
    if n <= 30:  # beyond that the numbers no longer fit in the cells
        _annotate_counts(ax, counts)
    total = counts.sum()
    acc = f"accuracy {np.trace(counts) / total:.1%}" if total else "no samples"
    ax.set_title(f"{title}\n({acc}, n={total:g})", fontsize=10)
    fig.tight_layout()
    return save_png(fig, out_png)


def _check_confusion(confusion: Any, classnames: Sequence[str]) -> np.ndarray:
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"plot_zeroshot_confusion: confusion must be a square (C, C) matrix, got shape {counts.shape}")
    if counts.shape[0] != len(classnames):
        raise ValueError(f"plot_zeroshot_confusion: confusion is {counts.shape[0]}x{counts.shape[0]} "
                         f"but {len(classnames)} classnames were given")
    if counts.size and (not np.isfinite(counts).all() or (counts < 0).any()):
        raise ValueError("plot_zeroshot_confusion: confusion has negative or non-finite counts")
    if counts.shape[0] == 0:
        raise ValueError("plot_zeroshot_confusion: confusion is empty (no classes)")
    return counts


def _annotate_counts(ax: Axes, counts: np.ndarray) -> None:
    threshold = counts.max() / 2
    fontsize = 9 if len(counts) <= 12 else 6.5
    for (i, j), v in np.ndenumerate(counts):
        if v == 0:
            continue  # blank zero cells make the off-diagonal mistakes stand out
        ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=fontsize,
                color="white" if v > threshold else "black")


# --------------------------------------------------------------------------- explanation heat map


def plot_explanation(pixels: Any, heatmap: Any, title: str, out_png: str | os.PathLike, *,
                     peak: tuple[float, float] | None = None, subtitle: str = "") -> Path:
    """The image, the image with the heat map overlaid (and its peak marked), and the text as title.

    Args:
        pixels: ``(H, W, 3)`` uint8 RGB pixels, the image as the model saw it.
        heatmap: ``(H, W)`` map on the same grid (any scale; shown min to max).
        title: the text that was explained.
        out_png: where to write the PNG.
        peak: ``(x, y)`` in continuous pixel coordinates, marked with a cross.
        subtitle: a second title line (method, score).
    """
    pixels, heat = np.asarray(pixels), np.asarray(heatmap, dtype=np.float64)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or heat.shape != pixels.shape[:2]:
        raise ValueError(f"plot_explanation: pixels must be (H, W, 3) and heatmap (H, W) on the same grid, "
                         f"got {pixels.shape} and {heat.shape}")
    fig = new_figure(6.4, 3.4, dpi=150)
    fig.set_layout_engine("constrained")
    extent = (0, pixels.shape[1], pixels.shape[0], 0)  # pixel i spans [i, i + 1), as Explanation.peak
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    left.imshow(pixels, extent=extent, interpolation="nearest")
    right.imshow(pixels, extent=extent, interpolation="nearest")
    im = right.imshow(heat, extent=extent, cmap="jet", alpha=0.5, interpolation="bilinear")
    fig.colorbar(im, ax=right, fraction=0.046, pad=0.04)
    if peak is not None:
        right.plot([peak[0]], [peak[1]], marker="x", color="white", markersize=9, markeredgewidth=2)
    for ax in (left, right):
        ax.set_axis_off()
    wrapped = "\n".join(textwrap.wrap(title, 60)[:3])
    fig.suptitle(wrapped + (f"\n{subtitle}" if subtitle else ""), fontsize=9)
    return save_png(fig, out_png)
