"""ONNX export: ONNX Runtime gives coembed's embeddings for any batch and text length; int8 stays close."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import coembed
from coembed.errors import ConfigError
from coembed.interop import onnx as ox
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.tokenizer_clip import ClipTokenizer
from coembed.towers.text_transformer import TextConfig, trim_padding
from coembed.towers.vit import VisionConfig
from coembed.transforms import ImageTransform

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


def _ids(lengths: list[int], width: int, pad: int, eot: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, : n - 1] = torch.randint(3, 200, (n - 1,), generator=gen)
        ids[row, n - 1] = eot
    return ids


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``tiny`` (conv stem with BatchNorm, causal text tower) with trained-looking BatchNorm statistics."""
    torch.manual_seed(0)
    model = coembed.create_model("tiny")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model.eval()
    folder = tmp_path_factory.mktemp("onnx")
    config = ox.export(model, ImageTransform(model.cfg.vision.image_size), folder, int8=True, source="tiny")
    return model, folder, config


@pytest.mark.parametrize("batch", [1, 5])
def test_image_graph_matches_for_other_batch_sizes(exported, batch: int) -> None:
    model, folder, config = exported
    images = torch.randn(batch, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        want = model.encode_image(images, normalize=True).numpy()
    got = ox.OnnxEncoder(folder).encode_image(images)
    assert np.abs(got - want).max() <= 1e-5
    assert not model.training  # the exporter must not have left BatchNorm in training mode


def test_text_graph_matches_for_other_lengths_padded_or_not(exported) -> None:
    model, folder, config = exported
    cfg = model.text_cfg
    ids = _ids([3, 17, 30], config.context_length, cfg.pad_id, cfg.eot_id)  # traced with length 8
    with torch.no_grad():
        want = model.encode_text(ids, normalize=True).numpy()
    encoder = ox.OnnxEncoder(folder)
    assert np.abs(encoder.encode_text(ids) - want).max() <= 1e-5
    # The graph itself takes untrimmed ids (padding to the full context) and gives the same.
    raw = encoder.sessions["text"].run(None, {"input_ids": ids.numpy()})[0]
    assert np.abs(raw - want).max() <= 1e-5


def test_int8_graphs_stay_close_to_float(exported) -> None:
    model, folder, config = exported
    images = torch.randn(4, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(9))
    ids = _ids([4, 9, 12, 20], config.context_length, model.text_cfg.pad_id, model.text_cfg.eot_id, seed=3)
    full, quant = ox.OnnxEncoder(folder), ox.OnnxEncoder(folder, int8=True)
    for a, b in ((full.encode_image(images), quant.encode_image(images)), (full.encode_text(ids), quant.encode_text(ids))):
        cosine = (a * b).sum(1)  # both normalised
        assert cosine.min() > 0.99
    assert (folder / "image.int8.onnx").stat().st_size < (folder / "image.onnx").stat().st_size / 2
    assert json.loads((folder / ox.CONFIG).read_text())["int8"] is True


def test_numpy_trim_equals_torch_trim() -> None:
    ids = torch.tensor([[5, 6, 0, 0, 0], [7, 0, 8, 0, 0]])
    assert np.array_equal(ox.trim_trailing_padding(ids.numpy(), 0), trim_padding(ids, 0).numpy())
    assert ox.trim_trailing_padding(np.zeros((2, 4), dtype=np.int64), 0).shape == (2, 1)


def test_missing_folder_and_missing_int8_are_named(exported, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="onnx_config.json"):
        ox.OnnxEncoder(tmp_path)
    _, folder, _ = exported
    (tmp_path / ox.CONFIG).write_text((folder / ox.CONFIG).read_text())
    (tmp_path / "image.onnx").write_bytes((folder / "image.onnx").read_bytes())
    with pytest.raises(ConfigError, match="text.onnx"):
        ox.OnnxEncoder(tmp_path)


def test_export_command_checks_parity(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = DualEncoderConfig(embed_dim=32, vision=VisionConfig(image_size=32, patch_size=16, width=64, layers=1, heads=2),
                            text=TextConfig(vocab_size=49408, context_length=77, width=64, layers=1, heads=2,
                                            pool_type="argmax", eot_id=49407))
    coembed.save(tmp_path / "ckpt", DualEncoder(cfg), ClipTokenizer.default())
    entry = Path(sys.executable).parent / "coembed"
    proc = subprocess.run([str(entry), "export", "onnx", "--checkpoint", str(tmp_path / "ckpt"), "--out",
                           str(tmp_path / "onnx"), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert max(report["max_abs_diff"]["fp32"].values()) <= 1e-5
    assert (tmp_path / "onnx" / "text.onnx").is_file() and (tmp_path / "onnx" / "image.onnx").is_file()


def test_export_command_names_a_missing_checkpoint(tmp_path: Path) -> None:
    entry = Path(sys.executable).parent / "coembed"
    proc = subprocess.run([str(entry), "export", "onnx", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"coembed export: error: checkpoint {tmp_path / 'nope'} does not exist"
    assert not (tmp_path / "o").exists()


def test_missing_onnx_package_is_a_clear_error_before_any_write(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(ConfigError, match="pip install 'coembed\\[onnx\\]'"):
        ox.export(coembed.create_model("tiny"), ImageTransform(64), tmp_path / "out")
    assert not (tmp_path / "out").exists()
