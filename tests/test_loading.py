"""coembed.save / coembed.load round trip and refusal of damaged checkpoint folders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import coembed
from coembed.errors import CheckpointError
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.tokenizer import Tokenizer
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig
from coembed.transforms import ImageTransform

CORPUS = [
    "a small red circle",
    "a large blue square",
    "two green triangles left of a red circle",
    "a yellow square above a small blue circle",
    "three red squares",
    "a large green circle next to a small yellow triangle",
] * 5


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=300)


def _model(tokenizer: Tokenizer, **kw) -> DualEncoder:
    torch.manual_seed(0)
    cfg = DualEncoderConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2),
        text=TextConfig(vocab_size=tokenizer.vocab_size, context_length=16, width=32, layers=1, heads=2),
        **kw,
    )
    return DualEncoder(cfg)


@pytest.fixture()
def saved(tmp_path: Path, tokenizer: Tokenizer) -> tuple[Path, DualEncoder]:
    model = _model(tokenizer)
    coembed.save(tmp_path / "ck", model, tokenizer)
    return tmp_path / "ck", model


def test_round_trip(saved: tuple[Path, DualEncoder], tokenizer: Tokenizer) -> None:
    path, model = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    loaded = coembed.load(path)
    assert isinstance(loaded, coembed.Loaded)
    new_model, preprocess, new_tok = loaded  # unpacks as documented
    assert new_model.cfg == model.cfg
    assert not new_model.training
    original = model.state_dict()
    restored = new_model.state_dict()
    assert set(original) == set(restored)
    for k, v in original.items():
        assert restored[k].dtype == v.dtype and torch.equal(restored[k], v), k

    texts = ["a small red circle", "three green triangles above a yellow square"]
    tokens = tokenizer(texts, context_length=16)
    assert torch.equal(new_tok(texts, context_length=16), tokens)
    assert new_tok.vocab_size == tokenizer.vocab_size
    model.eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(new_model.encode_text(tokens, normalize=True), model.encode_text(tokens, normalize=True))
        assert torch.equal(new_model.encode_image(images), model.encode_image(images))

    assert preprocess == ImageTransform(image_size=16)


def test_round_trip_siglip_and_custom_preprocess(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = _model(tokenizer, init_logit_bias=-10.0)
    with torch.no_grad():
        model.logit_bias.fill_(-7.5)
    pre = ImageTransform(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), resize_mode="squash")
    coembed.save(tmp_path, model, tokenizer, preprocess=pre)
    loaded = coembed.load(tmp_path)
    assert loaded.model.logit_bias.item() == -7.5
    assert loaded.preprocess == pre


def test_load_run_folder(tmp_path: Path, tokenizer: Tokenizer) -> None:
    model = _model(tokenizer)
    coembed.save(tmp_path / "run" / "checkpoint", model, tokenizer)
    loaded = coembed.load(tmp_path / "run")
    assert torch.equal(loaded.model.text_projection, model.text_projection)


def test_config_json_content(saved: tuple[Path, DualEncoder]) -> None:
    path, model = saved
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == 1
    assert config["model"]["family"] == "dual_encoder"
    assert config["model"]["vision"]["patch_size"] == 8
    assert config["preprocess"]["image_size"] == 16


def test_corrupt_config_json(saved: tuple[Path, DualEncoder]) -> None:
    path, _ = saved
    (path / "config.json").write_text('{"format_version": 1, "model": ')
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        coembed.load(path)


def test_config_without_model_section(saved: tuple[Path, DualEncoder]) -> None:
    path, _ = saved
    (path / "config.json").write_text('{"format_version": 1}')
    with pytest.raises(CheckpointError, match=r"config\.json has no 'model' section"):
        coembed.load(path)


@pytest.mark.parametrize(
    "model_section,match",
    [
        ({"family": "dual_encoder", "embed_dim": 16, "bogus": 1}, "bogus"),
        ({"family": "resnet"}, "unsupported model family 'resnet'"),
        ([1, 2], "must be a JSON object"),
        ({"embed_dim": 0}, "embed_dim"),
    ],
)
def test_invalid_model_section_names_config(saved: tuple[Path, DualEncoder], model_section, match: str) -> None:
    path, _ = saved
    config = json.loads((path / "config.json").read_text())
    config["model"] = model_section
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=match) as info:
        coembed.load(path)
    assert "config.json" in str(info.value)


def test_invalid_preprocess_section(saved: tuple[Path, DualEncoder]) -> None:
    path, _ = saved
    config = json.loads((path / "config.json").read_text())
    config["preprocess"]["resize_mode"] = "stretch"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: invalid preprocess section.*stretch"):
        coembed.load(path)


def test_missing_tokenizer(saved: tuple[Path, DualEncoder]) -> None:
    path, _ = saved
    (path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        coembed.load(path)


def test_missing_weights(saved: tuple[Path, DualEncoder]) -> None:
    path, _ = saved
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing .*model\.safetensors"):
        coembed.load(path)


def _edit_weights(path: Path, edit) -> None:
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_extra_tensor_is_refused(saved: tuple[Path, DualEncoder]) -> None:
    path, _ = saved
    _edit_weights(path, lambda t: t.update({"visual.extra_head.weight": torch.zeros(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected: visual\.extra_head\.weight") as info:
        coembed.load(path)
    assert str(path) in str(info.value)


def test_missing_tensor_is_refused(saved: tuple[Path, DualEncoder]) -> None:
    path, _ = saved
    _edit_weights(path, lambda t: t.pop("ln_final.bias"))
    with pytest.raises(CheckpointError, match=r"missing: ln_final\.bias"):
        coembed.load(path)


def test_wrong_shape_is_refused(saved: tuple[Path, DualEncoder]) -> None:
    path, _ = saved
    _edit_weights(path, lambda t: t.update({"text_projection": torch.zeros(32, 8)}))
    with pytest.raises(CheckpointError, match=r"wrong shape: text_projection \(32, 8\) != \(32, 16\)"):
        coembed.load(path)


def test_garbage_weights(saved: tuple[Path, DualEncoder]) -> None:
    path, _ = saved
    (path / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is not a valid safetensors file"):
        coembed.load(path)


def test_load_nonexistent(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        coembed.load(tmp_path / "nothing")


@pytest.mark.parametrize(("stored", "given", "expected"), [
    ({"act": "gelu"}, True, "quick_gelu"),
    ({"act": "quick_gelu"}, False, "gelu"),
    ({"act": "gelu_tanh"}, False, "gelu_tanh"),  # "not QuickGELU" leaves another activation alone
    ({"quick_gelu": True}, True, "quick_gelu"),  # a config from before `act`
])
def test_quick_gelu_override_of_a_coembed_config(stored: dict, given: bool, expected: str, tmp_path: Path) -> None:
    from coembed.loading import _override_quick_gelu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = _override_quick_gelu({"embed_dim": 8, **stored}, given, tmp_path / "config.json")
    assert out["act"] == expected and "quick_gelu" not in out
