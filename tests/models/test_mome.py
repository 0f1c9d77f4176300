"""VLMo mixture-of-modality-experts: expert routing against a naive per-position loop, the dual-encoder
passes against the blocks run by hand, expert isolation, padding, modality types and checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import coembed
from coembed.models.mome import MomeBlock, Vlmo, VlmoConfig
from tests.helpers import small_vl_model, vl_inputs

SMALL = {"image_size": 32, "patch_size": 8, "vocab_size": 40, "context_length": 12, "width": 32, "layers": 3, "vl_layers": 1,
         "heads": 2, "embed_dim": 24}


def small_model(seed: int = 0, **overrides) -> Vlmo:
    return small_vl_model(Vlmo, VlmoConfig, SMALL, seed, **overrides)


def inputs(batch: int = 3, length: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return vl_inputs(batch, length, seed)


def perturb(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p))


def naive_expert_name(layer: int, position: int, *, mode: str, text_len: int, layers: int, vl_layers: int) -> str:
    """VLMo's routing rule for one position: its modality's expert, except fusion in the top vl_layers."""
    if mode == "fusion":
        if layer >= layers - vl_layers:
            return "vl"
        return "text" if position < text_len else "image"
    return mode


def naive_run(model: Vlmo, x: torch.Tensor, keep: torch.Tensor, mode: str, text_len: int = 0) -> torch.Tensor:
    """The blocks run by hand: shared attention, then one position at a time through its expert."""
    for layer, block in enumerate(model.blocks):
        x = x + block.attn(block.ln_1(x), mask=keep[:, None, None, :])
        out = torch.empty_like(x)
        for pos in range(x.shape[1]):
            name = naive_expert_name(layer, pos, mode=mode, text_len=text_len, layers=model.cfg.layers, vl_layers=model.cfg.vl_layers)
            expert = block.experts[name]
            out[:, pos] = x[:, pos] + expert.mlp.c_proj(F.gelu(expert.mlp.c_fc(expert.norm(x[:, pos]))))
        x = out
    return model.norm(x)


def test_output_shapes_and_normalised_embeddings() -> None:
    model = small_model()
    images, tokens = inputs()
    assert model.itm_logits(images, tokens).shape == (3, 2)
    assert model.mlm_logits(images, tokens).shape == (3, 7, 40)
    img, txt = model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)
    assert img.shape == txt.shape == (3, 24)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert model.temperature().item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_only_the_top_blocks_have_a_vl_expert() -> None:
    model = small_model(layers=4, vl_layers=2)
    assert [b.with_vl for b in model.blocks] == [False, False, True, True]
    assert not any(b.with_vl for b in small_model(vl_layers=0).blocks)


@pytest.mark.parametrize("vl_layers", [0, 1, 3])
def test_fusion_routing_matches_naive_per_position_loop(vl_layers: int) -> None:
    model = small_model(vl_layers=vl_layers)
    images, tokens = inputs()
    x, mask = model.embeddings.embed_joint(images, tokens)
    keep = mask[:, 0, 0, :]
    torch.testing.assert_close(model.fusion_features(images, tokens), naive_run(model, x, keep, "fusion", tokens.shape[1]))


def test_text_pass_equals_the_blocks_run_by_hand_with_the_language_experts() -> None:
    model = small_model()
    _, tokens = inputs()
    x, _ = model.embeddings.embed_text(tokens)
    states = naive_run(model, x, tokens != 0, "text")
    torch.testing.assert_close(model.text_features(tokens), states)
    torch.testing.assert_close(model.encode_text(tokens), states[:, 0] @ model.text_proj.weight.T)


def test_image_pass_equals_the_blocks_run_by_hand_with_the_vision_experts() -> None:
    model = small_model()
    images, _ = inputs()
    x = model.embeddings.embed_image(images)
    states = naive_run(model, x, torch.ones(x.shape[:2], dtype=torch.bool), "image")
    torch.testing.assert_close(model.image_features(images), states)
    torch.testing.assert_close(model.encode_image(images), states[:, 0] @ model.image_proj.weight.T)


def test_each_expert_sees_only_its_modality() -> None:
    model = small_model()
    images, tokens = inputs()
    text, image, fused = model.encode_text(tokens), model.encode_image(images), model.fusion_features(images, tokens)
    for block in model.blocks:
        perturb(block.experts["image"])
    torch.testing.assert_close(model.encode_text(tokens), text)
    assert not torch.allclose(model.encode_image(images), image, atol=1e-4)
    model = small_model()
    for block in model.blocks:
        perturb(block.experts["text"])
    torch.testing.assert_close(model.encode_image(images), image)
    assert not torch.allclose(model.encode_text(tokens), text, atol=1e-4)
    model = small_model()
    perturb(model.blocks[-1].experts["vl"])
    torch.testing.assert_close(model.encode_text(tokens), text)
    torch.testing.assert_close(model.encode_image(images), image)
    assert not torch.allclose(model.fusion_features(images, tokens), fused, atol=1e-4)


def test_top_block_modality_experts_are_unused_in_fusion() -> None:
    model = small_model()
    images, tokens = inputs()
    fused = model.fusion_features(images, tokens)
    perturb(model.blocks[-1].experts["text"])
    perturb(model.blocks[-1].experts["image"])
    torch.testing.assert_close(model.fusion_features(images, tokens), fused)


def test_block_rejects_unknown_mode() -> None:
    model = small_model()
    with pytest.raises(ValueError, match="mode must be one of"):
        model.run_blocks(torch.randn(1, 3, 32), None, "audio")


def test_extra_padding_changes_nothing() -> None:
    model = small_model()
    images, tokens = inputs()
    padded = F.pad(tokens, (0, 4), value=0)
    torch.testing.assert_close(model.encode_text(padded), model.encode_text(tokens), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.itm_logits(images, padded), model.itm_logits(images, tokens), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.mlm_logits(images, padded)[:, :7], model.mlm_logits(images, tokens), atol=1e-5, rtol=1e-5)


def test_fusion_routes_by_the_padded_text_length() -> None:
    # With extra padding the text/image boundary moves; the image positions must still get the V-FFN.
    model = small_model(vl_layers=0)
    images, tokens = inputs()
    padded = F.pad(tokens, (0, 3), value=0)
    torch.testing.assert_close(model.fusion_features(images, padded)[:, 10:], model.fusion_features(images, tokens)[:, 7:],
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("row", [0, 1])
def test_modality_type_embeddings_are_used(row: int) -> None:
    model = small_model()
    images, tokens = inputs()
    encode = (lambda: model.encode_text(tokens)) if row == 0 else (lambda: model.encode_image(images))
    before, fused = encode(), model.itm_logits(images, tokens)
    with torch.no_grad():
        model.embeddings.token_type_embeddings.weight[row] += torch.randn(32)
    assert not torch.allclose(encode(), before, atol=1e-4)
    assert not torch.allclose(model.itm_logits(images, tokens), fused, atol=1e-4)


def test_block_without_vl_has_only_the_modality_experts() -> None:
    block = MomeBlock(16, 2, 2.0, 1e-6, with_vl=False)
    assert sorted(block.experts) == ["image", "text"]


def test_no_weight_decay_names() -> None:
    names = small_model().no_weight_decay()
    assert {"logit_scale", "embeddings.image.cls_token", "embeddings.text.word_embeddings.weight", "blocks.2.experts.vl.norm.weight"} <= names
    assert "blocks.0.experts.text.mlp.c_fc.weight" not in names and "text_proj.weight" not in names


@pytest.mark.parametrize("field,value", [("vl_layers", 4), ("vl_layers", -1), ("embed_dim", 0), ("width", 33), ("stem", "x")])
def test_invalid_config_names_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        VlmoConfig(**{**SMALL, field: value})


def test_checkpoint_round_trip(tmp_path) -> None:
    from coembed.tokenizer import Tokenizer

    model = small_model(stem="conv")
    tokenizer = Tokenizer.train(["a red circle", "a blue square left of a green star"] * 20, vocab_size=300)
    coembed.loading.save(tmp_path / "ckpt", model, tokenizer)
    loaded = coembed.load(tmp_path / "ckpt")
    assert isinstance(loaded.model, Vlmo) and loaded.model.cfg == model.cfg
    images, tokens = inputs()
    torch.testing.assert_close(loaded.model.itm_logits(images, tokens), model.itm_logits(images, tokens))
    torch.testing.assert_close(loaded.model.encode_image(images), model.encode_image(images))
    torch.testing.assert_close(loaded.model.encode_text(tokens), model.encode_text(tokens))
