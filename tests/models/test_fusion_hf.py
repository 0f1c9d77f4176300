"""ALBEF with a Hugging Face text encoder (``albef-minilm``): the encoder's states equal transformers'
BertModel, a frozen encoder gets no gradient and is stored once, the momentum text side is the EMA of
the adapter only, mean pooling matches a naive loop, and a checkpoint round trip is exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coembed.interop.hf_tokenizer import read_hf_tokenizer
from coembed.loading import load, save
from coembed.models.fusion import FusionConfig, FusionHFTextConfig, FusionModel, MomentumHFText
from coembed.towers.vit import VisionConfig

CAPTIONS = ["a red circle left of a blue square", "a small green star", "there is a big purple heart above a tiny ring"]


def hf_model(folder: Path, **text) -> FusionModel:
    torch.manual_seed(0)
    cfg = FusionConfig(embed_dim=16, vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2),
                       text=FusionHFTextConfig(path=str(folder), width=32, heads=2, fusion_layers=1, context_length=32, **text),
                       queue_size=8)
    model = FusionModel(cfg)
    model.load_pretrained()
    return model.eval()


@pytest.fixture()
def ids(tiny_bert_folder: Path) -> torch.Tensor:
    return read_hf_tokenizer(tiny_bert_folder)(CAPTIONS, context_length=32)


def test_encoder_states_equal_transformers_bert(tiny_bert_folder: Path, ids: torch.Tensor) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.BertModel.from_pretrained(tiny_bert_folder).eval()
    model = hf_model(tiny_bert_folder)
    with torch.no_grad():
        states, mask = model.text.encoder_states(ids)
        want = reference(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state[:, : states.shape[1]]
    assert mask.shape == states.shape[:2] and mask.sum().item() == (ids != 0).sum().item()
    torch.testing.assert_close(states[mask], want[mask], atol=1e-5, rtol=1e-5)


def test_frozen_encoder_gets_no_gradient_and_is_stored_once(tiny_bert_folder: Path, ids: torch.Tensor) -> None:
    model = hf_model(tiny_bert_folder)
    logits = model.itm_logits(torch.randn(3, 3, 32, 32), ids)
    logits.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in model.text.transformer.parameters())
    assert all(p.grad is not None for p in model.text.adapter.parameters())
    keys = model.state_dict().keys()
    assert any(k.startswith("text.transformer.") for k in keys)
    assert not any(k.startswith("text_m.transformer") for k in keys) and any(k.startswith("text_m.adapter.") for k in keys)
    assert isinstance(model.text_m, MomentumHFText)


def test_momentum_text_is_the_ema_of_the_adapter(tiny_bert_folder: Path) -> None:
    model = hf_model(tiny_bert_folder)
    with torch.no_grad():
        for p in model.text.adapter.parameters():
            p.add_(1.0)
    before = {n: p.clone() for n, p in model.text_m.adapter.named_parameters()}
    online = dict(model.text.adapter.named_parameters())
    model.momentum_update()
    for n, p_m in model.text_m.adapter.named_parameters():
        torch.testing.assert_close(p_m, 0.995 * before[n] + 0.005 * online[n])


def test_mean_pooling_and_encoder_reuse(tiny_bert_folder: Path, ids: torch.Tensor) -> None:
    model = hf_model(tiny_bert_folder)
    calls = []
    model.text.transformer.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        hidden, mask = model.encode_text_tokens(ids)
        naive = torch.stack([hidden[b, mask[b]].mean(0) for b in range(len(CAPTIONS))])
        torch.testing.assert_close(model.pool_text(hidden, mask), naive)
        model.momentum_features(torch.randn(3, 3, 32, 32), ids)  # the same tensor: the frozen states are reused
        assert len(calls) == 1
        model.encode_text_tokens(ids.clone())
        assert len(calls) == 2


def test_mlm_logits_cover_the_encoders_vocabulary(tiny_bert_folder: Path, ids: torch.Tensor) -> None:
    model = hf_model(tiny_bert_folder)
    hidden, mask = model.encode_text_tokens(ids)
    fused = model.fuse(hidden, mask, model.image_tokens(torch.randn(3, 3, 32, 32)))
    assert model.mlm_logits(fused).shape == (*fused.shape[:2], 30522)


def test_checkpoint_round_trip_is_exact(tmp_path: Path, tiny_bert_folder: Path, ids: torch.Tensor) -> None:
    model = hf_model(tiny_bert_folder)
    save(tmp_path / "ckpt", model, read_hf_tokenizer(tiny_bert_folder))
    loaded = load(tmp_path / "ckpt")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.itm_logits(images, ids), model.itm_logits(images, ids), atol=0, rtol=0)
        torch.testing.assert_close(loaded.model.encode_text(ids), model.encode_text(ids), atol=0, rtol=0)
    torch.testing.assert_close(loaded.tokenizer(CAPTIONS, context_length=32), ids)


def test_config_names_bad_fields(tiny_bert_folder: Path) -> None:
    with pytest.raises(ValueError, match="pooling"):
        FusionHFTextConfig(path=str(tiny_bert_folder), pooling="max")
    with pytest.raises(ValueError, match="text.path"):
        FusionHFTextConfig()
    with pytest.raises(ValueError, match="context_length"):
        FusionHFTextConfig(path=str(tiny_bert_folder), context_length=1000)
