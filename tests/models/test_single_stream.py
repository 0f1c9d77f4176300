"""ViLT single-stream model: shapes, padding, modality types, heads, config checks and checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import coembed
from coembed.models.single_stream import Vilt, ViltConfig
from tests.helpers import small_vl_model, vl_inputs

SMALL = {"image_size": 32, "patch_size": 8, "vocab_size": 40, "context_length": 12, "width": 32, "layers": 2, "heads": 2}


def small_model(seed: int = 0, **overrides) -> Vilt:
    return small_vl_model(Vilt, ViltConfig, SMALL, seed, **overrides)


def inputs(batch: int = 3, length: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return vl_inputs(batch, length, seed)


def test_output_shapes() -> None:
    model = small_model()
    images, tokens = inputs()
    assert model.itm_logits(images, tokens).shape == (3, 2)
    assert model.mlm_logits(images, tokens).shape == (3, 7, 40)
    assert model.forward_features(images, tokens).shape == (3, 7 + 1 + 16, 32)


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_extra_padding_changes_nothing(stem: str) -> None:
    model = small_model(stem=stem)
    images, tokens = inputs()
    padded = F.pad(tokens, (0, 4), value=0)
    torch.testing.assert_close(model.itm_logits(images, padded), model.itm_logits(images, tokens), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.mlm_logits(images, padded)[:, :7], model.mlm_logits(images, tokens), atol=1e-5, rtol=1e-5)


def test_a_padded_row_equals_the_row_alone() -> None:
    # Row 1 carries 3 padding positions inside the batch; its real tokens and image tokens must not see them.
    model = small_model()
    images, tokens = inputs()
    states = model.forward_features(images, tokens)
    row = model.forward_features(images[1:2], tokens[1:2, :4])  # row 1 alone without its padding
    torch.testing.assert_close(states[1:2, :4], row[:, :4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states[1:2, 7:], row[:, 4:], atol=1e-5, rtol=1e-5)


def naive_features(model: Vilt, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The joint sequence built step by step: text (word + position + type 0), then [image CLS] +
    patches (+ position + type 1), one Transformer with padding keys hidden, final LayerNorm."""
    emb = model.embeddings
    text = emb.text.word_embeddings.weight[tokens] + emb.text.position_embeddings[: tokens.shape[1]] + emb.token_type_embeddings.weight[0]
    patches = emb.image.proj(images).flatten(2).transpose(1, 2)
    cls = emb.image.cls_token.expand(images.shape[0], 1, -1)
    image = torch.cat([cls, patches], 1) + emb.image.position_embeddings + emb.token_type_embeddings.weight[1]
    x = torch.cat([text, image], 1)
    keep = torch.cat([tokens != 0, torch.ones(tokens.shape[0], image.shape[1], dtype=torch.bool)], 1)
    for block in model.transformer.resblocks:
        x = x + block.attn(block.ln_1(x), mask=keep[:, None, None, :])
        x = x + block.mlp(block.ln_2(x))
    return model.norm(x)


def test_features_match_the_sequence_built_by_hand() -> None:
    model = small_model()
    images, tokens = inputs()
    torch.testing.assert_close(model.forward_features(images, tokens), naive_features(model, images, tokens))


@pytest.mark.parametrize("row", [0, 1])
def test_modality_type_embeddings_are_used(row: int) -> None:
    model = small_model()
    images, tokens = inputs()
    before = model.itm_logits(images, tokens)
    with torch.no_grad():
        # A random vector: a constant one would be removed by the LayerNorms.
        model.embeddings.token_type_embeddings.weight[row] += torch.randn(32)
    assert not torch.allclose(model.itm_logits(images, tokens), before, atol=1e-4)


def test_itm_head_reads_the_first_token() -> None:
    model = small_model()
    images, tokens = inputs()
    states = model.forward_features(images, tokens)
    expected = model.itm_head.fc(torch.tanh(model.itm_head.pooler(states[:, 0])))
    torch.testing.assert_close(model.itm_logits(images, tokens), expected)


def test_mlm_decoder_is_tied_to_the_word_embeddings() -> None:
    model = small_model()
    images, tokens = inputs()
    unused = sorted(set(range(5, 40)) - set(tokens.flatten().tolist()))[0]
    before = model.mlm_logits(images, tokens)
    with torch.no_grad():
        model.embeddings.text.word_embeddings.weight[unused] += 1.0
    after = model.mlm_logits(images, tokens)
    changed = (after - before).abs().amax(dim=(0, 1)) > 1e-6  # (V,) which vocabulary columns moved
    assert changed.nonzero().flatten().tolist() == [unused]
    assert not any("decoder" in name for name, _ in model.named_parameters())


def test_mlm_logits_depend_on_the_image() -> None:
    model = small_model()
    images, tokens = inputs()
    assert not torch.allclose(model.mlm_logits(images, tokens), model.mlm_logits(images.flip(0), tokens), atol=1e-4)


def test_no_weight_decay_names() -> None:
    names = small_model().no_weight_decay()
    assert {"embeddings.text.word_embeddings.weight", "embeddings.image.cls_token", "embeddings.token_type_embeddings.weight",
            "embeddings.image.position_embeddings", "norm.weight", "itm_head.fc.bias"} <= names
    assert "transformer.resblocks.0.attn.in_proj_weight" not in names and "itm_head.fc.weight" not in names


@pytest.mark.parametrize("field,value", [("width", 33), ("patch_size", 5), ("stem", "vit"), ("layers", 0), ("pad_id", 40),
                                         ("mlp_ratio", 0.0), ("heads", True)])
def test_invalid_config_names_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        ViltConfig(**{**SMALL, field: value})


def test_wrong_image_size_is_a_clear_error() -> None:
    _, tokens = inputs()
    with pytest.raises(ValueError, match=r"images must have shape \(batch, 3, 32, 32\)"):
        small_model().itm_logits(torch.randn(3, 3, 64, 64), tokens)


def test_text_longer_than_the_context_is_a_clear_error() -> None:
    images, _ = inputs()
    with pytest.raises(ValueError, match="context_length 12"):
        small_model().itm_logits(images, torch.ones(3, 13, dtype=torch.long))


def test_checkpoint_round_trip(tmp_path) -> None:
    from coembed.tokenizer import Tokenizer

    model = small_model(stem="conv")
    tokenizer = Tokenizer.train(["a red circle", "a blue square left of a green star"] * 20, vocab_size=300)
    coembed.loading.save(tmp_path / "ckpt", model, tokenizer)
    loaded = coembed.load(tmp_path / "ckpt")
    assert isinstance(loaded.model, Vilt) and loaded.model.cfg == model.cfg
    assert loaded.preprocess.image_size == 32
    images, tokens = inputs()
    torch.testing.assert_close(loaded.model.itm_logits(images, tokens), model.itm_logits(images, tokens))
