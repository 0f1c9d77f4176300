"""Presenting evaluation results: a monospace table for the terminal and a JSON record on disk."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from coembed.io import atomic_write_json

RESERVED_KEYS = ("dataset", "model", "split", "task", "metrics")


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str] = ("task", "metric", "value")) -> str:
    """Render rows as an aligned monospace table with a header rule.

    Floats are shown with 4 decimals, ints as they are, anything else via ``str``; columns holding
    only numbers are right-aligned.

    Args:
        rows: each row has one cell per header, e.g. ``(task, metric, value)``.
        headers: column titles.

    Returns:
        The table as lines joined by ``\\n`` (no trailing newline, no trailing spaces).
    """
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"rows[{i}] has {len(row)} cells but there are {len(headers)} headers")
    cells = [[_format_cell(v) for v in row] for row in rows]
    numeric = [bool(rows) and all(_is_number(row[j]) for row in rows) for j in range(len(headers))]
    widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = (v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric))
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule] + [line(r) for r in cells])


def flatten_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, str, float | int]]:
    """Turn ``{task: {metric: value, group: {name: value}}}`` into ``(task, metric, value)`` rows.

    Nested names are joined with ``/`` (``("compositional", "by_type/swap_relation", 0.7)``); a
    number at the top level becomes ``("", name, value)``. Leaves that are not numbers (strings,
    lists, None, bools) are skipped. Order follows the dicts.
    """
    rows: list[tuple[str, str, float | int]] = []
    for task, value in metrics.items():
        if isinstance(value, Mapping):
            rows.extend((str(task), name, leaf) for name, leaf in _leaves(value, ""))
        elif (number := _as_number(value)) is not None:
            rows.append(("", str(task), number))
    return rows


def write_eval_json(
    path: str | os.PathLike,
    *,
    dataset: str,
    model: str,
    split: str,
    metrics: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    task: str = "multi",
) -> dict[str, Any]:
    """Atomically write one evaluation record as JSON and return it.

    The record holds ``dataset``, ``model``, ``split``, ``task``, ``metrics``, ``coembed_version``
    and the ``extra`` keys (e.g. timing). JSON has no NaN or infinity, so such floats are written
    as ``null``; tuples become lists and numpy / torch scalars plain numbers.

    Args:
        path: output file; parent folders are created.
        dataset: dataset name or path.
        model: model name or checkpoint path.
        split: evaluated split, e.g. ``"test"``.
        metrics: nested metric dict, e.g. ``{"retrieval": {...}, "zeroshot": {...}}``.
        extra: further top-level keys; may override ``coembed_version`` but not the keys above.
        task: what was evaluated; ``"multi"`` for several tasks.

    Raises:
        ValueError: ``extra`` reuses a reserved key, or a value cannot be represented in JSON.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra must not contain the reserved keys {clash}")
    record = {"dataset": dataset, "model": model, "split": split, "task": task, "metrics": metrics}
    record = {**record, "coembed_version": _version(), **extra}
    record = _jsonable(record, "record")
    atomic_write_json(path, record)
    return record


def _leaves(tree: Mapping[str, Any], prefix: str) -> list[tuple[str, float | int]]:
    """``(path, number)`` for every numeric leaf below ``tree``."""
    out: list[tuple[str, float | int]] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_leaves(value, name + "/"))
        elif (number := _as_number(value)) is not None:
            out.append((name, number))
    return out


def _as_number(value: Any) -> float | int | None:
    """A plain int / float for numbers and 0-d numpy / torch values; None for anything else."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _is_number(value: Any) -> bool:
    return _as_number(value) is not None


def _format_cell(value: Any) -> str:
    number = _as_number(value)
    if number is None:
        return str(value)
    return str(number) if isinstance(number, int) else f"{number:.4f}"


def _jsonable(value: Any, where: str) -> Any:
    """A JSON-safe copy of ``value``; ``where`` names the location for error messages."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    number = _as_number(value)
    if number is None:
        raise ValueError(f"{where}: cannot write {type(value).__name__} to JSON")
    return number if isinstance(number, int) or math.isfinite(number) else None


def _version() -> str:
    try:
        return metadata.version("coembed")
    except metadata.PackageNotFoundError:
        return "unknown"
