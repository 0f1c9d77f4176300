"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path


def copy_test_images(shapes_data: Path, root: Path, count: int, folder_of: Callable[[int], str]) -> Path:
    """Copy the first ``count`` test-split images of ``shapes_data`` under ``root``, image i into ``folder_of(i)``."""
    for i, src in enumerate(sorted((shapes_data / "test" / "images").glob("*.png"))[:count]):
        dst = root / folder_of(i) / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    return root


def png_header(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width x height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b"")


def small_vl_model(model_cls, cfg_cls, small: dict, seed: int = 0, **overrides):
    """A small single-stream / MoME model in eval mode with non-zero biases and type embeddings, so a
    term left out of a forward pass would show in its output."""
    import torch

    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**{**small, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "token_type" in name:
                p.normal_(std=0.3)
    return model


def vl_inputs(batch: int = 3, length: int = 7, seed: int = 1):
    """32 px images and token ids starting with <sot>; row 1 is shorter (real padding inside the batch)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 32, 32, generator=g)
    tokens = torch.randint(5, 40, (batch, length), generator=g)
    tokens[:, 0] = 1
    tokens[1, 4:] = 0
    return images, tokens


def torchrun_env(rank: int, world: int, port: int) -> None:
    """Set the variables ``torchrun`` gives process ``rank`` of ``world`` (rendezvous on 127.0.0.1:``port``),
    with one thread: the 2 CPU processes of a distributed test share the machine's cores."""
    import os

    import torch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def interrupt_then_resume(cfg, at_step: int, monkeypatch, step_function: str = "fusion_train_step") -> None:
    """Train ``cfg`` until step ``at_step`` raises KeyboardInterrupt, then resume it to the end;
    ``step_function`` is the loop's step of the model's family (``train_step`` for dual encoders)."""
    import pytest

    from coembed.train import loop as loop_mod

    real = getattr(loop_mod, step_function)

    def interrupted(*args, step: int, **kwargs):
        if step == at_step:
            raise KeyboardInterrupt
        return real(*args, step=step, **kwargs)

    monkeypatch.setattr(loop_mod, step_function, interrupted)
    with pytest.raises(KeyboardInterrupt):
        loop_mod.train(cfg)
    monkeypatch.setattr(loop_mod, step_function, real)
    loop_mod.train(cfg, resume=True)


def assert_same_runs(ref: Path, run: Path) -> None:
    """Two run folders logged the same metrics (timings aside) and saved the same weights."""
    import json

    import torch

    from coembed.checkpoint import read_tensors
    from coembed.train.loop import TIMING_KEYS

    lines = [[{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in (r / "metrics.jsonl").read_text().splitlines()]
             for r in (ref, run)]
    assert lines[0] == lines[1]
    want, got = (read_tensors(r / "checkpoint" / "model.safetensors") for r in (ref, run))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


# The VQA presets at a size that trains a step in well under a second (tests/train, tests/eval).
VQA_SMALL_VISION = {"vision.layers": 1, "vision.width": 32, "vision.heads": 2, "vision.stem": "patch"}
VQA_SMALL = {
    "vqa-albef-tiny": {**VQA_SMALL_VISION, "embed_dim": 32, "text.width": 32, "text.layers": 1, "text.fusion_layers": 1},
    "vqa-blip-tiny": {**VQA_SMALL_VISION, "text.width": 32, "text.layers": 1},
}


def copy_with_vqa(shapes_data: Path, root: Path, questions_per_image: int) -> Path:
    """A copy of ``shapes_data`` at ``root`` with SPLIT/vqa.jsonl written (seed 0)."""
    from coembed.data.synthetic.vqa import write_vqa

    shutil.copytree(shapes_data, root)
    write_vqa(root, questions_per_image=questions_per_image, seed=0)
    return root


# A captioner (blip-tiny, coca-tiny) at a size that trains a step in well under a second (tests/cli, tests/eval).
CAPTIONER_SMALL = {"vision.layers": 1, "vision.width": 32, "vision.heads": 2, "vision.stem": "patch", "text.width": 32, "text.layers": 1}


def train_small_captioner(data: Path, out: Path, preset: str, steps: int) -> Path:
    """A ``preset`` captioner at :data:`CAPTIONER_SMALL` trained ``steps`` steps of 16 on ``data``; returns ``out``."""
    from coembed.train.config import TrainConfig
    from coembed.train.loop import train

    train(TrainConfig(data=str(data), out=str(out), preset=preset, model=dict(CAPTIONER_SMALL), batch_size=16, max_steps=steps,
                      val_samples=0, workers=0, precision="fp32", progress=False, warmup_steps=1, vocab_size=300))
    return out
