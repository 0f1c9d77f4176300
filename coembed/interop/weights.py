"""Reading foreign weight files without executing code: safetensors, or ``torch.load(weights_only=True)``.

A TorchScript archive (OpenAI's original ``ViT-B-32.pt`` downloads are ones) holds code as well as
tensors; it is refused with the command that turns it into a plain state dict once.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from coembed.checkpoint import read_tensors
from coembed.errors import CheckpointError

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

TORCHSCRIPT_HELP = (
    "{path} is a TorchScript archive (code + weights, like OpenAI's original CLIP .pt files); coembed does not "
    "execute code from checkpoints. Convert it once to a plain state dict, in an environment you trust: "
    "python -c \"import torch; from safetensors.torch import save_file; "
    "sd = torch.jit.load('{path}', map_location='cpu').state_dict(); "
    "save_file({{k: v.float().contiguous() for k, v in sd.items() if k not in ('input_resolution', 'context_length', 'vocab_size')}}, "
    "'{stem}.safetensors')\" then load {stem}.safetensors (OpenAI weights use QuickGELU: pass quick_gelu=True / --quick-gelu)."
)


def is_torchscript(path: Path) -> bool:
    """A TorchScript zip holds ``code/`` and ``constants.pkl``; a ``torch.save`` zip holds neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """A bare state dict, or the ``state_dict`` of a training checkpoint; DDP's ``module.`` prefix removed."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a pickled state dict read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return read_tensors(path)
    if is_torchscript(path):
        raise CheckpointError(TORCHSCRIPT_HELP.format(path=path, stem=path.with_suffix("")))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read as a weights-only PyTorch file ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    return _unwrap(obj, path)
