"""Export a dual encoder's two towers to ONNX, quantise them to int8, and run them with ONNX Runtime.

``export`` writes a folder::

    image.onnx          pixel_values (B, 3, S, S) float32 -> image_embeds (B, D), L2-normalised
    text.onnx           input_ids (B, T) int64            -> text_embeds (B, D), L2-normalised
    image.int8.onnx     (with ``int8=True``) the same graphs, weights dynamically quantised to int8
    text.int8.onnx
    onnx_config.json    what a runtime needs besides the graphs: pad id, context length, image size,
                        normalisation, embedding width, source checkpoint

Both axes of ``input_ids`` are dynamic. Trailing padding changes nothing in coembed's text towers
(causal attention, or masked keys), so the graph is traced without trimming it and
:class:`OnnxEncoder` trims it in NumPy before each call, which keeps the speed of the PyTorch path.
onnx and onnxruntime are optional dependencies (``pip install coembed[onnx]``).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coembed.errors import ConfigError
from coembed.io import atomic_write_json
from coembed.models.dual_encoder import DualEncoder
from coembed.transforms import ImageTransform

CONFIG = "onnx_config.json"
OPSET = 17
GRAPHS = ("image", "text")


@dataclass
class OnnxConfig:
    """The facts about an exported model that the graphs do not hold."""

    pad_id: int
    context_length: int
    image_size: int
    mean: list[float]
    std: list[float]
    resize_mode: str
    embed_dim: int
    source: str
    int8: bool


class _TowerGraph(nn.Module):
    """One tower of ``model`` as a module: ``encode_image`` or ``encode_text``, normalised."""

    def __init__(self, model: DualEncoder, tower: str) -> None:
        super().__init__()
        self.model, self.tower = model, tower

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, f"encode_{self.tower}")(inputs, normalize=True)


def require(module: str) -> Any:
    """Import an optional ONNX package, or raise a ConfigError saying how to install it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ConfigError(f"ONNX export needs the package {module.split('.')[0]!r}: pip install 'coembed[onnx]'") from err


def _export_graph(graph: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str,
                  dynamic: dict[int, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    # The exporter restores the wrapper's training flag afterwards, recursively: a wrapper left in
    # training mode would switch the model's BatchNorm layers to batch statistics.
    graph.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # Shape checks in forward() become constants in the trace; the graph is exported for the
        # dynamic axes below, and the runtime checks shapes itself.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The TorchScript exporter is chosen on purpose (torch.export's needs onnxscript); the
        # advanced-indexing note concerns negative indices, and the pooled positions never are.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(graph, (example,), str(tmp), input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: dynamic, output_name: {0: "batch"}}, opset_version=OPSET,
                          dynamo=False)
    os.replace(tmp, path)


def quantize(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of a graph's MatMul/Gemm weights (activations quantised per call)."""
    quantization = require("onnxruntime.quantization")
    tmp = dst.with_name(f".{dst.name}.tmp")
    quantization.quantize_dynamic(str(src), str(tmp), weight_type=quantization.QuantType.QInt8,
                                  op_types_to_quantize=["MatMul", "Gemm"])
    os.replace(tmp, dst)


def export(model: DualEncoder, preprocess: ImageTransform, out: str | Path, *, int8: bool = False,
           source: str = "") -> OnnxConfig:
    """Write ``image.onnx`` and ``text.onnx`` (and int8 variants) of ``model`` into the folder ``out``."""
    if not isinstance(model, DualEncoder):
        raise ConfigError(f"ONNX export takes a dual encoder, got {type(model).__name__}")
    require("onnx")  # the exporter serialises with it
    if int8:
        require("onnxruntime.quantization")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    size = preprocess.image_size
    cfg = model.text_cfg
    tokens = torch.full((2, min(8, cfg.context_length)), cfg.pad_id, dtype=torch.long)
    tokens[:, :3] = torch.tensor([[5, 6, 7], [8, 9, 10]])
    _export_graph(_TowerGraph(model, "image"), torch.zeros(2, 3, size, size), out / "image.onnx", "pixel_values",
                  "image_embeds", {0: "batch"})
    _export_graph(_TowerGraph(model, "text"), tokens, out / "text.onnx", "input_ids", "text_embeds",
                  {0: "batch", 1: "sequence"})
    if int8:
        for name in GRAPHS:
            quantize(out / f"{name}.onnx", out / f"{name}.int8.onnx")
    config = OnnxConfig(pad_id=int(cfg.pad_id), context_length=int(cfg.context_length), image_size=size,
                        mean=list(preprocess.mean), std=list(preprocess.std), resize_mode=preprocess.resize_mode,
                        embed_dim=int(model.cfg.embed_dim), source=str(source), int8=int8)
    atomic_write_json(out / CONFIG, asdict(config))
    return config


def trim_trailing_padding(ids: np.ndarray, pad_id: int) -> np.ndarray:
    """NumPy twin of :func:`coembed.towers.text_transformer.trim_padding`."""
    used = np.flatnonzero((ids != pad_id).any(axis=0))
    return ids[:, : int(used[-1]) + 1 if used.size else 1]


class OnnxEncoder:
    """Run an exported folder with ONNX Runtime: ``encode_image`` / ``encode_text`` return normalised
    float32 embeddings, as ``DualEncoder.encode_*(..., normalize=True)``."""

    def __init__(self, folder: str | Path, *, int8: bool = False, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        folder = Path(folder)
        if not (folder / CONFIG).is_file():
            raise ConfigError(f"{folder}: no {CONFIG}; not a folder written by `coembed export onnx`")
        self.config = OnnxConfig(**json.loads((folder / CONFIG).read_text()))
        suffix = ".int8.onnx" if int8 else ".onnx"
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.sessions = {}
        for name in GRAPHS:
            path = folder / f"{name}{suffix}"
            if not path.is_file():
                raise ConfigError(f"{path}: missing" + ("; export with --int8" if int8 else ""))
            self.sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def encode_image(self, pixel_values: np.ndarray | torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(pixel_values, dtype=np.float32))
        return self.sessions["image"].run(None, {"pixel_values": x})[0]

    def encode_text(self, input_ids: np.ndarray | torch.Tensor) -> np.ndarray:
        ids = trim_trailing_padding(np.asarray(input_ids, dtype=np.int64), self.config.pad_id)
        return self.sessions["text"].run(None, {"input_ids": np.ascontiguousarray(ids)})[0]


def parity(model: DualEncoder, encoder: OnnxEncoder, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, float]:
    """Max abs difference between the ONNX Runtime embeddings and coembed's (normalised)."""
    with torch.no_grad():
        want_img = model.encode_image(images, normalize=True).numpy()
        want_txt = model.encode_text(tokens, normalize=True).numpy()
    return {"image": float(np.abs(encoder.encode_image(images) - want_img).max()),
            "text": float(np.abs(encoder.encode_text(tokens) - want_txt).max())}


__all__ = ["OnnxConfig", "OnnxEncoder", "export", "parity", "quantize", "require", "trim_trailing_padding"]
