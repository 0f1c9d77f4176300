"""Checkpoint folders: ``model.safetensors`` + ``config.json`` + ``tokenizer.json`` (+ train state).

No pickles anywhere: tensors go to safetensors, everything else to JSON. A folder is published
atomically: it is written under a temporary name, then renamed into place; the previous folder is
kept as ``<name>.old`` until the new one is complete, and loading falls back to it, so a crash at any
moment leaves one complete checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from coembed.errors import CheckpointError
from coembed.io import atomic_write_json

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 1


@dataclass
class CheckpointFiles:
    """What a checkpoint folder holds once read."""

    path: Path
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def resolve(path: str | os.PathLike) -> Path:
    """Find the checkpoint folder for ``path``: the folder itself, or a run folder's ``checkpoint/``.

    Falls back to ``<folder>.old`` when a crash interrupted the swap of a new checkpoint.
    """
    path = Path(path)
    for candidate in (path, path / CHECKPOINT_DIR):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
        # Normalise first: "." or "run/.." have no usable name to append ".old" to.
        absolute = Path(os.path.abspath(candidate))
        old = absolute.with_name(absolute.name + ".old") if absolute.name else None
        if old is not None and (old / CONFIG_FILE).is_file():
            return old
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raise CheckpointError(
        f"{path} is not a coembed checkpoint: no {CONFIG_FILE} in it or in {path / CHECKPOINT_DIR}"
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_files(folder: Path) -> None:
    """Flush every file of ``folder`` to disk, so a rename never publishes data still in the page cache."""
    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def publish_folder(staging: Path, target: Path) -> None:
    """Atomically replace ``target`` by the fully written folder ``staging``.

    Every step leaves one complete checkpoint under ``target`` or ``target.old`` (which :func:`resolve`
    falls back to): the staged files are fsynced before any rename, the old folder is renamed aside, the
    new one into place, and only then is the old one removed.
    """
    _fsync_files(staging)
    _fsync_dir(staging)
    old = target.with_name(target.name + ".old")
    if old.exists() and target.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors to safetensors (contiguous, CPU copies, no shared storage)."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    try:
        save_file(clean, str(path), metadata=metadata)
    except SafetensorError as e:  # the Rust writer hides the OS error in its message: give it back
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning format errors into :class:`CheckpointError`."""
    if not path.is_file():
        raise CheckpointError(f"missing {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from None


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, naming the file on failure."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"missing {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    except OSError as e:  # a directory in its place, no permission...
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def save_model_files(folder: Path, model: torch.nn.Module, config: dict[str, Any], tokenizer_json: str | None) -> None:
    """Write the inference part of a checkpoint into an existing (staging) folder (no tokenizer file if None)."""
    write_tensors(folder / MODEL_FILE, model.state_dict(), metadata={"format": "coembed", "version": str(FORMAT_VERSION)})
    atomic_write_json(folder / CONFIG_FILE, {"format_version": FORMAT_VERSION, **config})
    if tokenizer_json is not None:
        (folder / TOKENIZER_FILE).write_text(tokenizer_json, encoding="utf-8")


def read_model_files(path: str | os.PathLike) -> CheckpointFiles:
    """Read config and weights of a checkpoint folder (or a run folder holding ``checkpoint/``)."""
    folder = resolve(path)
    config = read_json(folder / CONFIG_FILE)
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        hint = "; a Hugging Face folder's config.json would name its model_type" if version is None else ""
        raise CheckpointError(f"{folder / CONFIG_FILE}: unsupported format_version {version!r} (expected {FORMAT_VERSION}){hint}")
    return CheckpointFiles(folder, config, read_tensors(folder / MODEL_FILE))


def check_keys(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse missing, unexpected or mis-shaped tensors, listing them (nothing is silently dropped)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    )
    # load_state_dict would silently cast integers into float weights: a sure sign of a damaged file
    dtype = sorted(
        f"{k} {str(state_dict[k].dtype).removeprefix('torch.')} != {str(v.dtype).removeprefix('torch.')}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].is_floating_point() != v.is_floating_point()
    )
    problems = [
        f"{label}: {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong), ("wrong dtype", dtype))
        if items
    ]
    if problems:
        raise CheckpointError(f"{source} does not match the model config; " + "; ".join(problems))
