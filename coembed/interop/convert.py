"""Convert a checkpoint between coembed, OpenCLIP and Hugging Face formats (any direction)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from coembed.errors import CheckpointError
from coembed.interop import hf, openclip
from coembed.interop.common import source_dtype
from coembed.loading import FORMATS, build_model, detect_format, load, read_foreign, save
from coembed.towers.hf_text import HFTextConfig


@dataclass
class Conversion:
    """What :func:`convert` did."""

    source: str
    source_format: str
    target: str
    target_format: str
    tensors: int
    parameters: int
    dtype: str


def convert(src: str | Path, dst: str | Path, to: str, *, quick_gelu: bool | None = None) -> Conversion:
    """Read ``src`` (format detected) and write it to the folder ``dst`` in format ``to``.

    Tensors are copied unchanged (renamed, packed or transposed as the target names them), so a
    round trip gives back every tensor exactly; a foreign source keeps its dtype on the way out.
    """
    if to not in FORMATS:
        raise CheckpointError(f"unknown target format {to!r}; choose one of {', '.join(FORMATS)}")
    dst = Path(dst)
    if dst.is_file() or (dst.is_dir() and any(dst.iterdir())):
        raise CheckpointError(f"{dst} already exists and is not empty; choose a new folder")
    fmt = detect_format(src)
    if fmt == "coembed":
        model, preprocess, tokenizer = load(src, quick_gelu=quick_gelu)
        dtype = torch.float32
    else:
        foreign = read_foreign(src, fmt, quick_gelu)
        model = build_model(foreign.config, foreign.state_dict, src)
        preprocess, tokenizer, dtype = foreign.preprocess, foreign.tokenizer, foreign.dtype
    if to != "coembed" and isinstance(model.cfg.text, HFTextConfig):
        raise CheckpointError(f"{src} has a Hugging Face text tower ({model.cfg.text.path or 'local folder'}); "
                              f"--to {to} writes CLIP text transformers only, so keep it in coembed format")
    if to == "coembed":
        save(dst, model, tokenizer, preprocess)
    elif to == "openclip":
        openclip.write(dst, model, preprocess, dtype)
    else:
        hf.write(dst, model, preprocess, tokenizer, dtype)
    state = model.state_dict()
    return Conversion(str(src), fmt, str(dst), to, len(state), sum(p.numel() for p in model.parameters()),
                      str(dtype if to != "coembed" else source_dtype(state)).removeprefix("torch."))
