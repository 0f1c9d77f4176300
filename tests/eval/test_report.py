"""Terminal table, metric flattening and the evaluation JSON record."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from coembed.eval.report import flatten_metrics, format_table, write_eval_json

METRICS = {
    "retrieval": {"image_retrieval_recall@1": 0.51234, "text_retrieval_recall@1": 0.6},
    "zeroshot_shape": {"acc1": 0.9, "acc5": 1.0, "mean_per_class_recall": 0.875},
    "compositional": {
        "pair_accuracy": 0.7,
        "image_accuracy": 0.4,
        "by_type": {"swap_attributes": 0.65, "change_count": 0.8},
        "n_images": 120,
        "n_negatives": 360,
        "note": "text leaf is skipped",
    },
    "seconds": 12.5,
    "flag": True,
}


def test_flatten_metrics():
    rows = flatten_metrics(METRICS)
    assert rows == [
        ("retrieval", "image_retrieval_recall@1", 0.51234),
        ("retrieval", "text_retrieval_recall@1", 0.6),
        ("zeroshot_shape", "acc1", 0.9),
        ("zeroshot_shape", "acc5", 1.0),
        ("zeroshot_shape", "mean_per_class_recall", 0.875),
        ("compositional", "pair_accuracy", 0.7),
        ("compositional", "image_accuracy", 0.4),
        ("compositional", "by_type/swap_attributes", 0.65),
        ("compositional", "by_type/change_count", 0.8),
        ("compositional", "n_images", 120),
        ("compositional", "n_negatives", 360),
        ("", "seconds", 12.5),
    ]


def test_flatten_converts_numpy_and_torch_scalars():
    rows = flatten_metrics({"t": {"a": np.float32(0.5), "b": torch.tensor(3), "c": np.bool_(True), "d": [1, 2]}})
    assert rows == [("t", "a", 0.5), ("t", "b", 3)]
    assert type(rows[0][2]) is float and type(rows[1][2]) is int


def test_format_table_contains_all_values_aligned():
    rows = flatten_metrics(METRICS)
    table = format_table(rows)
    lines = table.split("\n")
    assert lines[0].split() == ["task", "metric", "value"]
    assert set(lines[1]) == {"-", " "}
    assert len(lines) == 2 + len(rows)
    for line, (task, metric, value) in zip(lines[2:], rows):
        expected = str(value) if isinstance(value, int) else f"{value:.4f}"
        assert line.split() == ([task] if task else []) + [metric, expected]
    assert "0.5123" in table and "360" in table
    # Value column right-aligned: every line (header included) ends at the same column.
    assert len({len(line) for line in lines}) == 1
    assert not any(line != line.rstrip() for line in lines)


def test_format_table_text_column_left_aligned_and_custom_headers():
    table = format_table([("a", "x"), ("bbbb", 2.0)], headers=("name", "v"))
    assert table.split("\n") == ["name  v", "----  ------", "a     x", "bbbb  2.0000"]
    with pytest.raises(ValueError, match=r"rows\[1\] has 2 cells but there are 3 headers"):
        format_table([("a", "b", 1.0), ("a", 2.0)])
    assert format_table([]) == "task  metric  value\n----  ------  -----"


def test_write_eval_json_round_trip(tmp_path: Path):
    path = tmp_path / "sub" / "eval.json"
    odd = {"nan": float("nan"), "inf": np.float64("inf"), "t": torch.tensor(0.25), "pair": (1, 2)}
    metrics = {**METRICS, "odd": odd}
    written = write_eval_json(path, dataset="shapes", model="runs/demo", split="test", metrics=metrics,
                              extra={"seconds": 3.5, "path": tmp_path})
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert loaded == written
    assert {k: loaded[k] for k in ("dataset", "model", "split", "task")} == {
        "dataset": "shapes", "model": "runs/demo", "split": "test", "task": "multi",
    }
    assert loaded["metrics"]["compositional"]["by_type"] == {"swap_attributes": 0.65, "change_count": 0.8}
    assert loaded["metrics"]["retrieval"] == METRICS["retrieval"]
    assert loaded["metrics"]["odd"] == {"nan": None, "inf": None, "t": 0.25, "pair": [1, 2]}
    assert loaded["seconds"] == 3.5 and loaded["path"] == str(tmp_path)
    assert isinstance(loaded["coembed_version"], str) and loaded["coembed_version"]
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temp file left behind
    assert "NaN" not in path.read_text(encoding="utf-8")
    assert math.isnan(metrics["odd"]["nan"])  # input untouched


def test_write_eval_json_rejects_reserved_extra_and_unknown_values(tmp_path: Path):
    with pytest.raises(ValueError, match=r"reserved keys \['metrics'\]"):
        write_eval_json(tmp_path / "a.json", dataset="d", model="m", split="s", metrics={}, extra={"metrics": 1})
    with pytest.raises(ValueError, match=r"record\.metrics\.t\.x: cannot write object"):
        write_eval_json(tmp_path / "b.json", dataset="d", model="m", split="s", metrics={"t": {"x": object()}})
    assert not list(tmp_path.iterdir())
