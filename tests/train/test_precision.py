"""Precision resolution: ``auto`` picks bf16 only where the hardware runs it natively."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coembed.train import loop as loop_mod
from coembed.train import precision as precision_mod
from coembed.train.config import TrainConfig
from coembed.train.precision import bf16_is_native, resolve_precision


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_follows_native_support(monkeypatch: pytest.MonkeyPatch, native: bool, expected: str) -> None:
    monkeypatch.setattr(precision_mod, "bf16_is_native", lambda device_type="cpu": native)
    chosen = resolve_precision("auto")
    assert chosen.name == expected and not chosen.slow
    assert chosen.note.startswith(f"precision auto -> {expected}")


@pytest.mark.parametrize("native", [True, False])
def test_explicit_choices_are_kept_and_slow_bf16_warns(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(precision_mod, "bf16_is_native", lambda device_type="cpu": native)
    assert resolve_precision("fp32") == ("fp32", "precision fp32", False)
    bf16 = resolve_precision("bf16")
    assert bf16.name == "bf16" and bf16.slow is (not native)
    assert ("warning" in bf16.note) is (not native)


def test_unknown_precision_and_device() -> None:
    with pytest.raises(ValueError, match="precision must be one of.*'fp16'"):
        resolve_precision("fp16")
    assert bf16_is_native("mps") is False


@pytest.mark.parametrize("native", [True, False])
def test_the_loop_trains_in_the_resolved_precision(shapes_data: Path, tiny_settings: dict[str, Any], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, capsys, native: bool) -> None:
    monkeypatch.setattr(precision_mod, "bf16_is_native", lambda device_type="cpu": native)
    seen = []
    real_step = loop_mod.train_step

    def spy(*args, **kwargs):
        seen.append(kwargs["bf16"])
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "train_step", spy)
    settings = {**tiny_settings, "precision": "auto", "max_steps": 2, "val_every": 2, "save_every": 2, "val_samples": 8}
    loop_mod.train(TrainConfig(data=str(shapes_data), out=str(tmp_path / "run"), **settings))
    assert seen == [native, native]
    assert capsys.readouterr().err == ""  # progress off and nothing slow: no note


def test_slow_bf16_is_reported_even_without_progress(shapes_data: Path, tiny_settings: dict[str, Any], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(precision_mod, "bf16_is_native", lambda device_type="cpu": False)
    settings = {**tiny_settings, "precision": "bf16", "max_steps": 1, "val_every": 1, "save_every": 1, "val_samples": 8}
    loop_mod.train(TrainConfig(data=str(shapes_data), out=str(tmp_path / "run"), **settings))
    assert "warning: precision bf16" in capsys.readouterr().err
