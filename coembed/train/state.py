"""Saving and restoring everything a run needs to continue exactly: weights, optimizer, progress.

Optimizer tensors go to ``train_state.safetensors`` (keys ``optim.<param index>.<name>``), scalars
and progress to ``train_state.json``. Nothing is pickled.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from coembed.checkpoint import (
    CHECKPOINT_DIR,
    STATE_JSON,
    STATE_TENSORS,
    publish_folder,
    read_json,
    read_tensors,
    save_model_files,
    write_tensors,
)
from coembed.errors import CheckpointError
from coembed.io import atomic_write_json


@dataclass
class Progress:
    """Where a run stands; enough to continue it from the same batch."""

    step: int = 0
    samples_seen: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)
    last_val: dict[str, float] = field(default_factory=dict)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors = {
        f"optim.{idx}.{name}": value
        for idx, slot in sd["state"].items()
        for name, value in slot.items()
        if torch.is_tensor(value)
    }
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        # per-parameter moments must have their parameter's shape; load_state_dict does not check,
        # and the first step would then fail deep inside the optimizer
        if value.ndim and int(idx) < len(params) and value.shape != params[int(idx)].shape:
            raise CheckpointError(f"optimizer state does not match the model: {key} has shape "
                                  f"{tuple(value.shape)}, its parameter {tuple(params[int(idx)].shape)}")
        state.setdefault(int(idx), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"optimizer state does not match the model: {e}") from None


def save_run_checkpoint(
    out: Path,
    model: torch.nn.Module,
    config: dict[str, Any],
    tokenizer_json: str,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    train_config: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``out/checkpoint`` atomically (staging folder, then rename) and return its path.
    ``extra_tensors`` (keys outside ``optim.*``, e.g. the EMA's ``ema.*``) join the train state."""
    staging = out / f".staging-{CHECKPOINT_DIR}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        save_model_files(staging, model, config, tokenizer_json)
        tensors, meta = optimizer_tensors(optimizer)
        write_tensors(staging / STATE_TENSORS, {**tensors, **(extra_tensors or {}), "rng.torch": torch.get_rng_state()})
        atomic_write_json(staging / STATE_JSON, {"progress": asdict(progress), "optimizer": meta, "train_config": train_config})
    except BaseException:  # e.g. a full disk: the published checkpoint is untouched, leave no half copy
        shutil.rmtree(staging, ignore_errors=True)
        raise
    target = out / CHECKPOINT_DIR
    publish_folder(staging, target)
    return target


def load_run_state(folder: Path, optimizer: torch.optim.Optimizer) -> tuple[Progress, dict[str, Any]]:
    """Restore optimizer and RNG from a checkpoint folder; return progress and the saved train config."""
    meta = read_json(folder / STATE_JSON)
    tensors = {k: v for k, v in read_tensors(folder / STATE_TENSORS).items() if k.startswith(("optim.", "rng."))}
    rng = tensors.pop("rng.torch", None)
    try:
        restore_optimizer(optimizer, tensors, meta.get("optimizer", {}))
    except CheckpointError as e:
        raise CheckpointError(f"{folder / STATE_TENSORS}: {e}") from None
    if rng is not None:
        torch.set_rng_state(rng)
    try:
        progress = Progress(**meta["progress"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / STATE_JSON}: malformed progress record ({e})") from None
    return progress, meta.get("train_config", {})


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)


def read_state_tensors(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The train-state tensors of a checkpoint folder whose names start with ``prefix`` (extra tensors)."""
    return {k: v for k, v in read_tensors(folder / STATE_TENSORS).items() if k.startswith(prefix)}
