"""ALBEF objective: the three losses, seeded reproducibility, queue use, the alpha ramp and the ITM batch
it builds (checked against a naive recomputation of the same pairs)."""

from __future__ import annotations

import copy

import pytest
import torch

from coembed.losses.matching import itm_loss
from coembed.models.fusion import FusionConfig, FusionModel, FusionTextConfig
from coembed.objectives import FusionBatch
from coembed.objectives import albef
from coembed.towers.vit import VisionConfig


def tiny() -> FusionModel:
    torch.manual_seed(0)
    cfg = FusionConfig(embed_dim=16, vision=VisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2),
                       text=FusionTextConfig(vocab_size=64, context_length=16, width=32, heads=2, layers=1, fusion_layers=1),
                       queue_size=8)
    return FusionModel(cfg)


def batch(b: int = 4, negatives: bool = False) -> FusionBatch:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 64, (b, 9), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2
    ids[0, 6:] = torch.tensor([2, 0, 0])
    neg = ids.roll(1, dims=0) if negatives else None
    return FusionBatch(torch.randn(b, 3, 32, 32, generator=g), ids, torch.tensor([0, 1, 2, 0])[:b], neg)


def test_alpha_ramps_linearly_then_stays() -> None:
    assert albef.distill_alpha(0.4, 0.0, 0.5) == 0.0
    assert albef.distill_alpha(0.4, 0.25, 0.5) == pytest.approx(0.2)
    assert albef.distill_alpha(0.4, 0.9, 0.5) == pytest.approx(0.4)


def test_losses_are_finite_and_reach_every_trained_parameter() -> None:
    model = tiny()
    losses = albef.compute_losses(model, batch(), progress=0.5, weights={}, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"itc", "itm", "mlm"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert all(p.grad is None for p in model.visual_m.parameters())
    assert int(model.queue_count) == 4 and model.idx_queue[:4].tolist() == [0, 1, 2, 0]


def test_seeded_runs_are_identical_and_weight_zero_skips_a_term() -> None:
    a, b = tiny(), tiny()
    la = albef.compute_losses(a, batch(), progress=0.1, weights={}, generator=torch.Generator().manual_seed(5))
    lb = albef.compute_losses(b, batch(), progress=0.1, weights={}, generator=torch.Generator().manual_seed(5))
    assert {k: v.item() for k, v in la.items()} == {k: v.item() for k, v in lb.items()}
    assert "mlm" not in albef.compute_losses(tiny(), batch(), progress=0.1, weights={"mlm": 0}, generator=torch.Generator())


def test_itm_term_equals_a_naive_recomputation_of_its_pairs(monkeypatch) -> None:
    model, data = tiny().eval(), batch(negatives=True)
    drawn = {}
    real = albef.sample_itm_negatives

    def spy(*args, **kw):
        drawn["neg"] = real(*args, **kw)
        return drawn["neg"]
    monkeypatch.setattr(albef, "sample_itm_negatives", spy)
    losses = albef.compute_losses(model, data, progress=0.0, weights={"mlm": 0}, generator=torch.Generator().manual_seed(3))
    neg_image, neg_text = drawn["neg"]
    ids = data.image_ids
    assert all(ids[neg_image[i]] != ids[i] and ids[neg_text[i]] != ids[i] for i in range(4))
    pairs = [(i, data.tokens[i], 1) for i in range(4)] + [(int(neg_image[i]), data.tokens[i], 0) for i in range(4)]
    pairs += [(i, data.tokens[int(neg_text[i])], 0) for i in range(4)] + [(i, data.negatives[i], 0) for i in range(4)]
    with torch.no_grad():
        logits = torch.cat([model.itm_logits(data.images[i : i + 1], t[None]) for i, t, _ in pairs])
    want = itm_loss(logits, torch.tensor([label for _, _, label in pairs]))
    torch.testing.assert_close(losses["itm"].detach(), want, atol=1e-5, rtol=1e-5)


def test_negatives_of_the_wrong_batch_size_are_refused() -> None:
    data = batch(negatives=True)
    data.negatives = data.negatives[:2]
    with pytest.raises(ValueError, match="batch.negatives"):
        albef.compute_losses(tiny(), data, progress=0.0, weights={}, generator=torch.Generator())


def test_second_step_uses_the_queue() -> None:
    model, seen = tiny(), []
    real = albef.itc_distill_loss

    def spy(*args, **kw):
        seen.append((args[4].shape[0], kw["queue_ids"].tolist()))
        return real(*args, **kw)
    albef.itc_distill_loss = spy
    try:
        for _ in range(2):
            albef.compute_losses(model, copy.deepcopy(batch()), progress=0.0, weights={}, generator=torch.Generator().manual_seed(0))
    finally:
        albef.itc_distill_loss = real
    assert seen == [(0, []), (4, [0, 1, 2, 0])]


def test_mlm_term_equals_the_loss_over_every_positions_logits() -> None:
    """The objective projects only the masked positions onto the vocabulary; the loss must equal
    :func:`mlm_loss` over the full (B, T, vocab) logits of the same masked captions."""
    from coembed.losses.matching import mask_tokens, mlm_loss

    model, data = tiny().eval(), batch()
    cfg = model.cfg.text
    got = albef.compute_losses(model, data, progress=0.0, weights={"itm": 0}, generator=torch.Generator().manual_seed(5))["mlm"]
    g = torch.Generator().manual_seed(5)
    # compute_losses draws nothing from the generator before the MLM masks when ITM is skipped
    inputs, labels = mask_tokens(data.tokens, mask_id=cfg.mask_id, vocab_size=cfg.vocab_size, special_ids=cfg.special_ids, generator=g)
    with torch.no_grad():
        hidden, mask = model.encode_text_tokens(inputs)
        logits = model.mlm_logits(model.fuse(hidden, mask, model.image_tokens(data.images)))
    torch.testing.assert_close(got.detach(), mlm_loss(logits, labels[:, : logits.shape[1]]), atol=1e-5, rtol=1e-5)
