"""ALBEF fusion model: config checks, padding invariance, cross-attention maps, momentum (EMA) and queues
against naive references, and an exact checkpoint round trip of momentum and queue state."""

from __future__ import annotations

import copy

import pytest
import torch

from coembed.loading import load, save
from coembed.models.families import build_model
from coembed.models.fusion import FusionConfig, FusionModel, FusionTextConfig
from coembed.tokenizer import Tokenizer
from coembed.towers.vit import VisionConfig

TINY = dict(embed_dim=16, vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2),
            text=FusionTextConfig(vocab_size=64, context_length=16, width=32, heads=2, layers=1, fusion_layers=2), queue_size=10)


def tiny(**kw) -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(FusionConfig(**{**copy.deepcopy(TINY), **kw})).eval()


def tokens(b: int = 3, t: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 64, (b, t), generator=g)
    ids[:, 0] = 1
    for row, length in enumerate(range(t, t - b, -1)):
        ids[row, length - 1] = 2
        ids[row, length:] = 0
    return ids


@pytest.mark.parametrize(("kw", "match"), [
    ({"embed_dim": 0}, "embed_dim"), ({"momentum": 1.0}, "momentum"), ({"queue_size": -1}, "queue_size"),
    ({"alpha": 1.5}, "alpha"), ({"alpha_ramp": 0.0}, "alpha_ramp"), ({"init_temperature": 0.0}, "init_temperature"),
])
def test_config_errors_name_the_field(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FusionConfig(**kw)


@pytest.mark.parametrize(("kw", "match"), [({"fusion_layers": 0}, "text.fusion_layers"), ({"heads": 3}, "text.width"),
                                           ({"mask_id": 64}, "text.mask_id")])
def test_text_config_errors_name_the_field(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FusionTextConfig(vocab_size=64, width=32, **{"heads": 2, **kw})


def test_config_dict_round_trip_through_the_registry() -> None:
    cfg = FusionConfig(**copy.deepcopy(TINY))
    data = cfg.to_dict()
    assert data["family"] == "albef"
    rebuilt = build_model(data.pop("family"), data)
    assert isinstance(rebuilt, FusionModel) and rebuilt.cfg == cfg


def test_real_token_states_do_not_depend_on_padding() -> None:
    model, ids = tiny(), tokens()
    padded = torch.cat([ids, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    images = torch.randn(3, 3, 32, 32)
    h1, m1 = model.encode_text_tokens(ids)
    assert torch.equal(m1, ids != 0)
    _, m2 = model.encode_text_tokens(padded)
    assert m2.shape[1] == ids.shape[1]  # trailing all-padding columns trimmed
    torch.testing.assert_close(model.itm_logits(images, padded), model.itm_logits(images, padded[:, :8]))
    short = tokens()[1:2, :7]  # row 1 alone, without its padding column
    torch.testing.assert_close(model.encode_text_tokens(short)[0][0], h1[1, :7], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.itm_logits(images[1:2], short), model.itm_logits(images[1:2], tokens()[1:2]), atol=1e-5, rtol=1e-5)


def test_cross_attention_maps_are_returned_in_the_graph() -> None:
    model, ids = tiny(), tokens()
    images = torch.randn(3, 3, 32, 32, requires_grad=True)
    logits, maps = model.itm_logits(images, ids, return_cross_attention=True)
    assert logits.shape == (3, 2) and len(maps) == 2
    for p in maps:
        assert p.shape == (3, 2, 8, 1 + 16) and p.requires_grad
        torch.testing.assert_close(p.sum(-1), torch.ones(3, 2, 8))
    torch.testing.assert_close(logits, model.itm_logits(images, ids), atol=1e-5, rtol=1e-5)  # explicit path == SDPA path
    grads = torch.autograd.grad(logits[:, 1].sum(), maps)
    assert all(g.abs().sum() > 0 for g in grads)


def test_fusion_image_positions_start_at_zero_and_add_to_every_attended_token() -> None:
    plain, positioned = tiny(), tiny(fusion_image_positions=True)
    missing = positioned.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing == ["fusion_position_embedding"]  # the only new tensor, so a warm start keeps the rest
    images, ids = torch.randn(2, 3, 32, 32), tokens(2)
    torch.testing.assert_close(positioned.itm_logits(images, ids), plain.itm_logits(images, ids))  # zero at init
    with torch.no_grad():
        positioned.fusion_position_embedding.normal_()
    hidden, mask = plain.encode_text_tokens(ids)
    image = plain.image_tokens(images)
    naive = plain.fusion(hidden, mask, image + positioned.fusion_position_embedding)  # the addition, by hand
    torch.testing.assert_close(positioned.fuse(hidden, mask, image), naive)
    positioned.itm_logits(images, ids)[:, 1].sum().backward()
    assert positioned.fusion_position_embedding.grad.abs().sum() > 0
    assert "fusion_position_embedding" in positioned.no_weight_decay()


def test_encoders_have_the_dual_encoder_interface() -> None:
    model = tiny()
    img = model.encode_image(torch.randn(2, 3, 32, 32), normalize=True)
    txt = model.encode_text(tokens(2), normalize=True)
    assert img.shape == txt.shape == (2, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    assert model.temperature().item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_mlm_decoder_is_tied_to_the_word_embeddings() -> None:
    model = tiny()
    assert not any("decoder" in name for name, _ in model.named_parameters())
    hidden, mask = model.encode_text_tokens(tokens())
    logits = model.mlm_logits(model.fuse(hidden, mask, model.image_tokens(torch.randn(3, 3, 32, 32))))
    assert logits.shape == (3, 8, 64)
    logits.sum().backward()
    assert model.text.token_embedding.weight.grad is not None


def test_momentum_update_is_the_ema_of_a_naive_loop() -> None:
    model = tiny(momentum=0.9)
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(1.0)
    expected = {n: 0.9 * p_m + 0.1 * dict(model.visual.named_parameters())[n] for n, p_m in model.visual_m.named_parameters()}
    model.momentum_update()
    for n, p_m in model.visual_m.named_parameters():
        torch.testing.assert_close(p_m, expected[n])
    assert not any(p.requires_grad for p in model.visual_m.parameters())
    assert all(p.requires_grad for p in model.visual.parameters())


def test_queue_is_a_ring_buffer_like_a_naive_list() -> None:
    model, size = tiny(), 10
    reference: list[tuple[torch.Tensor, int]] = []
    for step, b in enumerate((4, 4, 4, 3, 12)):
        feats = torch.randn(b, 16)
        ids = torch.arange(b) + 100 * step
        model.enqueue(feats, feats + 1, ids)
        reference = (reference + list(zip(feats, ids.tolist())))[-size:]
        image_q, text_q, ids_q = model.queue()
        assert len(ids_q) == len(reference)
        # the same set of rows as the last `size` enqueued (order within the ring may differ)
        got = sorted(zip(ids_q.tolist(), image_q.tolist()))
        want = sorted((i, f.tolist()) for f, i in reference)
        assert [g[0] for g in got] == [w[0] for w in want]
        torch.testing.assert_close(torch.tensor([g[1] for g in got]), torch.tensor([w[1] for w in want]))
        torch.testing.assert_close(text_q, image_q + 1)


def test_checkpoint_keeps_momentum_and_queues_exactly(tmp_path) -> None:
    model = tiny()
    model.momentum_update()
    with torch.no_grad():
        for p in model.text_m.parameters():
            p.add_(torch.randn_like(p))
    model.enqueue(torch.randn(7, 16), torch.randn(7, 16), torch.arange(7))
    tok = Tokenizer.train(["a red circle", "a blue square left of a red circle"] * 5, vocab_size=300)
    save(tmp_path / "ckpt", model, tok)
    loaded = load(tmp_path / "ckpt").model
    assert isinstance(loaded, FusionModel)
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert int(loaded.queue_count) == 7 and int(loaded.queue_ptr) == 7
