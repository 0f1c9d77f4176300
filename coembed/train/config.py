"""Training configuration: one typed dataclass, read from YAML plus ``--set key=value`` overrides."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from coembed.errors import ConfigError

LOSSES = ("clip", "siglip", "triplet")
PRECISIONS = ("fp32", "bf16")


@dataclass(kw_only=True)
class TrainConfig:
    """Everything a training run needs; saved next to its checkpoints."""

    data: str
    out: str
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # dotted overrides of the preset
    loss: str = "clip"
    batch_size: int = 128
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float | None = 1.0
    precision: str = "bf16"
    workers: int = 1
    seed: int = 0
    vocab_size: int = 1024
    log_every: int = 10
    val_every: int = 500
    save_every: int = 500
    val_samples: int = 1000
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        checks = [
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (contrastive losses need negatives), got {self.batch_size}"),
            (self.epochs > 0, f"epochs must be positive, got {self.epochs}"),
            (self.max_steps is None or self.max_steps > 0, f"max_steps must be positive, got {self.max_steps}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1), got {self.betas}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive or null, got {self.grad_clip}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.vocab_size >= 64, f"vocab_size must be >= 64, got {self.vocab_size}"),
            (min(self.log_every, self.val_every, self.save_every) > 0, "log_every, val_every and save_every must be positive"),
            (self.val_samples >= 0, f"val_samples must be >= 0, got {self.val_samples}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_value(text: str) -> Any:
    """YAML scalar parsing so ``--set lr=3e-4`` gives a float and ``--set max_steps=null`` None."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    """Turn ``["lr=1e-3", "model.vision.layers=6"]`` into a dict, naming any malformed item."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = _parse_value(value)
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping, naming the file on failure."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def build_train_config(base: dict[str, Any], file: str | None = None, sets: list[str] | None = None) -> TrainConfig:
    """Merge defaults < config file < ``--set`` overrides < explicit command-line values in ``base``.

    ``model.*`` keys in ``--set`` go to the model overrides (``model.vision.layers=6``).
    """
    merged: dict[str, Any] = {}
    if file:
        merged.update(read_yaml(file))
    model = dict(merged.pop("model", {}) or {})
    for key, value in parse_sets(sets or []).items():
        if key.startswith("model."):
            model[key.removeprefix("model.")] = value
        else:
            merged[key] = value
    merged.update({k: v for k, v in base.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ConfigError(f"unknown training setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    merged["model"] = {**dict(merged.get("model") or {}), **model}
    try:
        return TrainConfig(**merged)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid training setting: {e}") from None
