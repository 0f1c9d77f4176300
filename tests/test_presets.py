"""Preset registry, overrides and create_model."""

from __future__ import annotations

import math

import pytest

from coembed.errors import ConfigError
from coembed.models.dual_encoder import DualEncoder
from coembed.presets import apply_overrides, create_model, get_preset, list_presets

# Keeps create_model() calls small and fast.
SMALL = {
    "embed_dim": 16,
    "vision__width": 32,
    "vision__heads": 2,
    "vision__layers": 1,
    "text__width": 32,
    "text__heads": 2,
    "text__layers": 1,
    "text__vocab_size": 64,
}


def test_list_presets() -> None:
    names = list_presets()
    assert {"tiny", "tiny-siglip", "vit-b-32"} <= set(names)
    assert names == sorted(names)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*tiny.*vit-b-32"):
        get_preset("nope")


def test_get_preset_returns_fresh_copies() -> None:
    a = get_preset("tiny")
    a.embed_dim = 3
    a.vision.layers = 99
    b = get_preset("tiny")
    assert b.embed_dim == 128 and b.vision.layers == 4 and b.vision.stem == "conv"
    assert b.vision is not get_preset("tiny").vision


def test_tiny_patch_is_tiny_in_the_openclip_layout() -> None:
    tiny, patch = get_preset("tiny"), get_preset("tiny-patch")
    assert patch.vision.stem == "patch" and get_preset("vit-b-32").vision.stem == "patch"
    patch.vision.stem = "conv"
    assert patch == tiny


def test_vit_b_32_preset_shapes() -> None:
    cfg = get_preset("vit-b-32")
    assert (cfg.embed_dim, cfg.vision.image_size, cfg.vision.patch_size) == (512, 224, 32)
    assert (cfg.vision.width, cfg.vision.layers, cfg.vision.heads) == (768, 12, 12)
    assert (cfg.text.vocab_size, cfg.text.context_length, cfg.text.width, cfg.text.layers, cfg.text.heads) == (
        49408,
        77,
        512,
        12,
        8,
    )
    assert cfg.text.pool_type == "argmax"


def test_siglip_preset() -> None:
    cfg = get_preset("tiny-siglip")
    assert math.exp(cfg.init_logit_scale) == pytest.approx(10.0)
    assert cfg.init_logit_bias == -10.0
    assert get_preset("tiny").init_logit_bias is None


def test_apply_overrides_dotted_keys() -> None:
    base = get_preset("tiny")
    cfg = apply_overrides(base, {"vision.layers": 2, "text.context_length": 32, "embed_dim": 64})
    assert (cfg.vision.layers, cfg.text.context_length, cfg.embed_dim) == (2, 32, 64)
    # Everything else untouched, and the input config is not modified.
    assert cfg.vision.width == base.vision.width == 128
    assert base.vision.layers == 4 and base.embed_dim == 128


def test_apply_overrides_nested_dict_updates_only_named_fields() -> None:
    cfg = apply_overrides(get_preset("vit-b-32"), {"vision": {"layers": 2}})
    assert cfg.vision.layers == 2
    # The rest of the tower keeps the preset's values, not VisionConfig defaults.
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.width) == (224, 32, 768)


@pytest.mark.parametrize("key", ["vision.depth", "depth", "vision.layers.x", "text.width.y", "embed_dim.z"])
def test_unknown_key_is_named(key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown model setting '{key}'"):
        apply_overrides(get_preset("tiny"), {key: 1})


def test_unknown_key_in_nested_dict_is_named() -> None:
    with pytest.raises(ConfigError, match="'text.depth'"):
        apply_overrides(get_preset("tiny"), {"text": {"depth": 1}})


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"vision.patch_size": 7}, r"vision.image_size \(64\).*vision.patch_size \(7\)"),
        ({"text.pool_type": "mean"}, "pool_type"),
        ({"embed_dim": -1}, "embed_dim"),
        ({"vision.layers": "two"}, "invalid model setting"),
    ],
)
def test_invalid_value(overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        apply_overrides(get_preset("tiny"), overrides)


def test_create_model_with_overrides() -> None:
    model = create_model("tiny", **SMALL)
    assert isinstance(model, DualEncoder)
    assert model.text_projection.shape == (32, 16)
    assert model.visual.proj.shape == (32, 16)
    assert len(model.visual.transformer.resblocks) == 1


def test_create_model_double_underscore_is_a_dot() -> None:
    model = create_model("tiny", **{**SMALL, "vision__layers": 2, "embed_dim": 24})
    assert len(model.visual.transformer.resblocks) == 2
    assert len(model.transformer.resblocks) == 1
    assert model.cfg.embed_dim == 24 and model.visual.proj.shape == (32, 24)


def test_create_model_unknown_override() -> None:
    with pytest.raises(ConfigError, match="'vision.depth'"):
        create_model("tiny", vision__depth=3)


def test_create_model_siglip_has_bias() -> None:
    model = create_model("tiny-siglip", **SMALL)
    assert model.logit_bias is not None and model.logit_bias.item() == -10.0


@pytest.mark.parametrize("preset,family", [("vilt-tiny", "vilt"), ("vlmo-tiny", "vlmo")])
def test_fusion_presets_build_their_family(preset: str, family: str) -> None:
    from coembed.models.families import model_class

    model = create_model(preset, layers=2)
    assert type(model) is model_class(family) and model.cfg.layers == 2
    assert model.cfg.to_dict()["family"] == family
    with pytest.raises(ConfigError, match="unknown model setting 'vision.layers'"):
        create_model(preset, vision__layers=2)
