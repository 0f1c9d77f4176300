"""``coembed.interop.convert``: chains of conversions through every format give back every tensor exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import coembed
from coembed.errors import CheckpointError
from coembed.interop.convert import convert
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.tokenizer_clip import ClipTokenizer
from coembed.towers.resnet import ResNetConfig
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig
from coembed.transforms import ImageTransform
from interop_helpers import randomize

CLIP_TEXT = dict(vocab_size=49408, context_length=77, width=64, layers=2, heads=2, pool_type="argmax", eot_id=49407)
MODELS = {
    "vit": DualEncoderConfig(embed_dim=32, act="quick_gelu", text=TextConfig(**CLIP_TEXT),
                             vision=VisionConfig(image_size=32, patch_size=16, width=64, layers=2, heads=2)),
    "resnet": DualEncoderConfig(embed_dim=32, text=TextConfig(**CLIP_TEXT),
                                vision=ResNetConfig(image_size=64, layers=[1, 2, 1, 1], width=8, heads=4)),
    "siglip": DualEncoderConfig(
        embed_dim=64, act="gelu_tanh", init_logit_bias=-10.0,
        vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=1, heads=2, class_token=False, ln_pre=False,
                            patch_bias=True, pool="map", proj=False, ln_eps=1e-6),
        text=TextConfig(vocab_size=1000, context_length=16, width=64, layers=1, heads=2, pool_type="last", causal=False,
                        proj_bias=True, ln_eps=1e-6, pad_id=1)),
}
# The formats each model goes through, in order; every format it can be written in appears.
CHAINS = {"vit": ["openclip", "hf", "openclip", "coembed", "hf", "coembed"],
          "resnet": ["openclip", "coembed", "openclip"],
          "siglip": ["hf", "coembed", "hf"]}
WEIGHTS = {"coembed": "model.safetensors", "openclip": "open_clip_model.safetensors", "hf": "model.safetensors"}


@pytest.fixture(scope="module")
def clip_tokenizer() -> ClipTokenizer:
    return ClipTokenizer.default()


def _source(tmp_path: Path, kind: str, tokenizer) -> tuple[Path, DualEncoder]:
    torch.manual_seed(0)
    model = randomize(DualEncoder(MODELS[kind]), seed=4)
    path = tmp_path / "src"
    coembed.save(path, model, tokenizer if kind != "siglip" else None, ImageTransform(image_size=model.cfg.vision.image_size))
    return path, model


@pytest.mark.parametrize("kind", list(CHAINS))
def test_conversion_chain_gives_back_every_tensor(tmp_path: Path, kind: str, clip_tokenizer) -> None:
    src, model = _source(tmp_path, kind, clip_tokenizer)
    first: dict[str, dict[str, torch.Tensor]] = {"coembed": load_file(str(src / "model.safetensors"))}
    for step, fmt in enumerate(CHAINS[kind]):
        dst = tmp_path / f"{step}-{fmt}"
        result = convert(src, dst, fmt)
        assert (result.target_format, result.tensors) == (fmt, len(model.state_dict()))
        tensors = load_file(str(dst / WEIGHTS[fmt]))
        if fmt in first:
            assert tensors.keys() == first[fmt].keys()
            assert all(torch.equal(tensors[k], first[fmt][k]) for k in tensors), f"{kind}: step {step} ({fmt}) changed a tensor"
        first.setdefault(fmt, tensors)
        src = dst
    final = coembed.load(src).model.state_dict()
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())


def test_converted_models_compute_the_same(tmp_path: Path, clip_tokenizer) -> None:
    src, model = _source(tmp_path, "vit", clip_tokenizer)
    convert(src, tmp_path / "hf", "hf")
    again = coembed.load(tmp_path / "hf")
    images = torch.randn(2, 3, 32, 32)
    tokens = again.tokenizer(["a cat", "a dog"])
    with torch.no_grad():
        assert torch.equal(again.model.encode_image(images), model.eval().encode_image(images))
        assert torch.equal(again.model.encode_text(tokens), model.encode_text(tokens))


def test_openclip_config_records_quick_gelu_and_layout(tmp_path: Path, clip_tokenizer) -> None:
    src, _ = _source(tmp_path, "vit", clip_tokenizer)
    convert(src, tmp_path / "oc", "openclip")
    cfg = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())["model_cfg"]
    assert cfg["quick_gelu"] is True and cfg["vision_cfg"]["patch_size"] == 16 and "custom_text" not in cfg


def test_unrepresentable_targets_are_refused(tmp_path: Path, clip_tokenizer) -> None:
    src, _ = _source(tmp_path, "resnet", clip_tokenizer)
    with pytest.raises(CheckpointError, match="no ResNet"):
        convert(src, tmp_path / "hf", "hf")
    siglip, _ = _source(tmp_path / "s", "siglip", None)
    with pytest.raises(CheckpointError, match="only in SigLIP.s timm form"):
        convert(siglip, tmp_path / "oc", "openclip")
    conv = coembed.create_model("tiny")
    coembed.save(tmp_path / "tiny", conv, clip_tokenizer)
    with pytest.raises(CheckpointError, match="conv stem"):
        convert(tmp_path / "tiny", tmp_path / "oc2", "openclip")


def test_existing_destination_and_unknown_format_are_refused(tmp_path: Path, clip_tokenizer) -> None:
    src, _ = _source(tmp_path, "vit", clip_tokenizer)
    with pytest.raises(CheckpointError, match="already exists"):
        convert(src, src, "hf")
    with pytest.raises(CheckpointError, match="unknown target format"):
        convert(src, tmp_path / "x", "onnx")


def test_core_imports_no_reference_library() -> None:
    import subprocess
    import sys

    code = ("import sys, coembed, coembed.interop.convert, coembed.cli.main; from coembed.tokenizer_clip import ClipTokenizer; "
            "ClipTokenizer.default()('a cat'); "
            "print(sorted(m for m in ('open_clip', 'timm', 'transformers', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
