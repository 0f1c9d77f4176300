"""DualEncoder: temperature, SigLIP bias, weight-decay groups, outputs, gradients, bf16, OpenAI layout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig, DualEncoderOutput
from coembed.presets import get_preset
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig


def _config(**kw) -> DualEncoderConfig:
    return DualEncoderConfig(
        embed_dim=16,
        vision=VisionConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2),
        text=TextConfig(vocab_size=64, context_length=10, width=32, layers=1, heads=2),
        **kw,
    )


def _model(**kw) -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder(_config(**kw))


def _batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 16, 16, generator=g)
    tokens = torch.zeros(n, 10, dtype=torch.long)
    for i in range(n):
        length = 3 + i % 6
        tokens[i, 0] = 1
        tokens[i, 1 : length - 1] = torch.randint(5, 64, (length - 2,), generator=g)
        tokens[i, length - 1] = 2
    return images, tokens


def naive_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * image_emb @ text_emb.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_temperature_initialisation_and_clamp() -> None:
    model = _model()
    assert model.temperature().item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert model.temperature().item() == pytest.approx(14.2857, abs=1e-4)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) = 22026 -> clamped
    assert model.temperature().item() == 100.0
    with torch.no_grad():
        model.logit_scale.fill_(math.log(50.0))
    assert model.temperature().item() == pytest.approx(50.0, rel=1e-6)


def test_siglip_preset_has_bias_and_scale_ten() -> None:
    cfg = get_preset("tiny-siglip")
    assert cfg.init_logit_bias == -10.0
    shrunk = _config(init_logit_scale=cfg.init_logit_scale, init_logit_bias=cfg.init_logit_bias)
    model = DualEncoder(shrunk)
    assert model.logit_bias.item() == -10.0
    assert model.temperature().item() == pytest.approx(10.0, rel=1e-6)
    assert "logit_bias" in model.state_dict()
    out = model(*_batch())
    assert out.logit_bias is model.logit_bias


def test_clip_model_has_no_logit_bias() -> None:
    model = _model()
    assert model.logit_bias is None
    assert "logit_bias" not in model.state_dict()
    assert model(*_batch()).logit_bias is None


def test_no_weight_decay_groups() -> None:
    model = _model(init_logit_bias=-10.0)
    params = dict(model.named_parameters())
    skip = model.no_weight_decay()
    embeddings = {
        "token_embedding.weight",
        "positional_embedding",
        "visual.positional_embedding",
        "visual.class_embedding",
    }
    one_d = {n for n, p in params.items() if p.ndim <= 1}
    assert one_d >= {"logit_scale", "logit_bias", "visual.ln_pre.weight", "ln_final.bias"}
    assert skip == one_d | embeddings
    # What is decayed: exactly the matrices and the patch-embedding kernel.
    decayed = set(params) - skip
    matrix_suffixes = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    expected_decayed = {"visual.conv1.weight", "visual.proj", "text_projection"} | {
        n for n in params if n.endswith(matrix_suffixes)
    }
    assert decayed == expected_decayed
    assert len([n for n in decayed if n.endswith(matrix_suffixes)]) == 8  # 4 per tower, 1 layer each


def test_forward_returns_normalised_embeddings() -> None:
    model = _model()
    images, tokens = _batch()
    out = model(images, tokens)
    assert isinstance(out, DualEncoderOutput)
    assert out.image_emb.shape == (4, 16) and out.text_emb.shape == (4, 16)
    torch.testing.assert_close(out.image_emb.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out.text_emb.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out.logit_scale, model.temperature())
    # Normalised versions of the unnormalised encoders.
    raw = model.encode_image(images)
    torch.testing.assert_close(out.image_emb, raw / raw.norm(dim=-1, keepdim=True))
    raw = model.encode_text(tokens)
    torch.testing.assert_close(model.encode_text(tokens, normalize=True), raw / raw.norm(dim=-1, keepdim=True))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(4))


def test_gradients_reach_every_parameter() -> None:
    model = _model()
    model.train()
    out = model(*_batch())
    naive_clip_loss(out.image_emb, out.text_emb, out.logit_scale).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_siglip_bias_receives_gradient() -> None:
    model = _model(init_logit_scale=math.log(10.0), init_logit_bias=-10.0)
    out = model(*_batch())
    logits = out.logit_scale * out.image_emb @ out.text_emb.T + out.logit_bias
    labels = 2 * torch.eye(len(logits)) - 1
    (-F.logsigmoid(labels * logits).sum() / len(logits)).backward()
    assert model.logit_bias.grad is not None and model.logit_bias.grad.abs() > 0


def test_bf16_autocast_close_to_fp32() -> None:
    model = _model().eval()
    images, tokens = _batch()
    with torch.no_grad():
        ref = model(images, tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(images, tokens)
    for a, b in ((ref.image_emb, low.image_emb), (ref.text_emb, low.text_emb)):
        cos = F.cosine_similarity(a.float(), b.float(), dim=-1)
        assert (cos > 0.99).all(), cos


def test_config_to_dict_round_trip() -> None:
    cfg = _config(init_logit_bias=-10.0)
    data = cfg.to_dict()
    assert data["family"] == "dual_encoder"
    assert isinstance(data["vision"], dict) and data["vision"]["patch_size"] == 8
    data.pop("family")
    assert DualEncoderConfig(**data) == cfg


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="embed_dim must be positive, got 0"):
        DualEncoderConfig(embed_dim=0)


def _block_keys(prefix: str, width: int) -> dict[str, tuple]:
    return {
        prefix + "ln_1.weight": (width,),
        prefix + "ln_1.bias": (width,),
        prefix + "attn.in_proj_weight": (3 * width, width),
        prefix + "attn.in_proj_bias": (3 * width,),
        prefix + "attn.out_proj.weight": (width, width),
        prefix + "attn.out_proj.bias": (width,),
        prefix + "ln_2.weight": (width,),
        prefix + "ln_2.bias": (width,),
        prefix + "mlp.c_fc.weight": (4 * width, width),
        prefix + "mlp.c_fc.bias": (4 * width,),
        prefix + "mlp.c_proj.weight": (width, 4 * width),
        prefix + "mlp.c_proj.bias": (width,),
    }


def openai_vit_b_32_keys() -> dict[str, tuple]:
    """The OpenAI CLIP ViT-B/32 state dict (``ViT-B-32.pt``) as OpenCLIP's CLIP class names it.

    The OpenAI file also holds the integers ``input_resolution``, ``context_length`` and
    ``vocab_size``; they are not tensors of the model and the loader drops them (next issue).
    """
    keys: dict[str, tuple] = {
        "visual.conv1.weight": (768, 3, 32, 32),
        "visual.class_embedding": (768,),
        "visual.positional_embedding": (50, 768),
        "visual.ln_pre.weight": (768,),
        "visual.ln_pre.bias": (768,),
    }
    for i in range(12):
        keys.update(_block_keys(f"visual.transformer.resblocks.{i}.", 768))
    keys.update(
        {
            "visual.ln_post.weight": (768,),
            "visual.ln_post.bias": (768,),
            "visual.proj": (768, 512),
            "token_embedding.weight": (49408, 512),
            "positional_embedding": (77, 512),
        }
    )
    for i in range(12):
        keys.update(_block_keys(f"transformer.resblocks.{i}.", 512))
    keys.update(
        {
            "ln_final.weight": (512,),
            "ln_final.bias": (512,),
            "text_projection": (512, 512),
            "logit_scale": (),
        }
    )
    return keys


def test_vit_b_32_key_set_equals_openai_clip() -> None:
    with torch.device("meta"):  # shapes only; the real model is 151M parameters
        model = DualEncoder(get_preset("vit-b-32"))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = openai_vit_b_32_keys()
    assert expected["transformer.resblocks.0.attn.in_proj_weight"] == (1536, 512)
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == 151_277_313  # OpenAI ViT-B/32


def test_activation_is_held_once_and_quick_gelu_is_an_input_alias() -> None:
    # Configs written before `act` existed say quick_gelu=true; they still load, as act="quick_gelu".
    assert DualEncoderConfig(quick_gelu=True).act == "quick_gelu"
    assert DualEncoderConfig(quick_gelu=False, act="gelu_tanh").act == "gelu_tanh"
    assert "quick_gelu" not in DualEncoderConfig(act="quick_gelu").to_dict()
    with pytest.raises(ValueError, match="quick_gelu=True contradicts act='gelu_tanh'"):
        DualEncoderConfig(quick_gelu=True, act="gelu_tanh")
