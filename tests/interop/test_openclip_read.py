"""Reading OpenCLIP/OpenAI state dicts: shape inference, file kinds, refusals and the QuickGELU rule."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import coembed
from coembed.errors import CheckpointError
from coembed.interop.openclip import to_coembed_names
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig
from interop_helpers import randomize

# Widths that are multiples of 64, so OpenCLIP's rule heads = width / 64 gives back the heads.
CFG = DualEncoderConfig(embed_dim=32, vision=VisionConfig(image_size=32, patch_size=16, width=128, layers=2, heads=2),
                        text=TextConfig(vocab_size=49408, context_length=77, width=128, layers=1, heads=2,
                                        pool_type="argmax", eot_id=49407))


@pytest.fixture(scope="module")
def model() -> DualEncoder:
    torch.manual_seed(0)
    return randomize(DualEncoder(CFG), seed=5)


def _save(model: DualEncoder, path: Path, edit=None) -> Path:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if edit:
        edit(sd)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt", "m.bin"])
def test_architecture_inferred_from_shapes(model: DualEncoder, tmp_path: Path, name: str) -> None:
    path = _save(model, tmp_path / name)
    loaded = coembed.load(path, quick_gelu=False)
    got = loaded.model.cfg
    assert (got.vision.width, got.vision.layers, got.vision.heads, got.vision.patch_size, got.vision.image_size) == (128, 2, 2, 16, 32)
    assert (got.text.vocab_size, got.text.context_length, got.text.layers, got.text.heads, got.embed_dim) == (49408, 77, 1, 2, 32)
    images, tokens = torch.randn(1, 3, 32, 32), loaded.tokenizer(["a cat"])
    with torch.no_grad():
        assert torch.equal(loaded.model.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.model.encode_text(tokens), model.encode_text(tokens))


def test_openai_layout_without_config_warns_quick_gelu_guess(model: DualEncoder, tmp_path: Path) -> None:
    path = _save(model, tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match=r"assuming quick_gelu=True .*--no-quick-gelu"):
        loaded = coembed.load(path)
    assert loaded.model.cfg.act == "quick_gelu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert coembed.load(path, quick_gelu=False).model.cfg.act == "gelu"


def test_user_value_contradicting_config_is_warned(model: DualEncoder, tmp_path: Path) -> None:
    path = _save(model, tmp_path / "m.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 32, "quick_gelu": False}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert coembed.load(path).model.cfg.act == "gelu"
    with pytest.warns(UserWarning, match=r"config says quick_gelu=False, but quick_gelu=True was given"):
        assert coembed.load(path, quick_gelu=True).model.cfg.act == "quick_gelu"


def test_custom_text_layout(model: DualEncoder, tmp_path: Path) -> None:
    def nest(sd):
        for key in [k for k in sd if not k.startswith(("visual.", "logit_"))]:
            sd[f"text.{key}"] = sd.pop(key)

    path = _save(model, tmp_path / "m.safetensors", nest)
    loaded = coembed.load(path, quick_gelu=False)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in model.state_dict().items())


def test_training_checkpoint_with_module_prefix(model: DualEncoder, tmp_path: Path) -> None:
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    assert coembed.load(path, quick_gelu=False).model.cfg.vision.layers == 2


def test_unknown_and_missing_keys_are_listed(model: DualEncoder, tmp_path: Path) -> None:
    def damage(sd):
        sd["visual.extra.weight"] = torch.zeros(2)
        sd.pop("ln_final.bias")

    path = _save(model, tmp_path / "m.safetensors", damage)
    with pytest.raises(CheckpointError, match=r"missing: ln_final\.bias.*unexpected: visual\.extra\.weight"):
        coembed.load(path, quick_gelu=False)


def test_unknown_timm_keys_keep_their_names() -> None:
    sd, layout = to_coembed_names({"visual.trunk.blocks.0.ls1.gamma": torch.zeros(1), "visual.trunk.norm.weight": torch.ones(1)})
    assert layout["timm"] and set(sd) == {"visual.trunk.blocks.0.ls1.gamma", "visual.ln_post.weight"}


def test_torchscript_archive_is_refused_without_running_it(tmp_path: Path) -> None:
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match=r"TorchScript archive.*torch\.jit\.load.*ViT-B-32\.safetensors"):
        coembed.load(path)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": Path("/")}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        coembed.load(path)


def test_unsupported_openclip_option_is_refused(model: DualEncoder, tmp_path: Path) -> None:
    path = _save(model, tmp_path / "m.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"text_cfg": {"final_ln_after_pool": True}}}))
    with pytest.raises(CheckpointError, match="final_ln_after_pool=True"):
        coembed.load(path)
