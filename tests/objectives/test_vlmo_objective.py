"""VLMo objective: ITC from the dual passes, ITM negatives mined from those similarities, MLM."""

from __future__ import annotations

import pytest
import torch

import coembed.objectives.vlmo as vlmo
from coembed.losses.contrastive import clip_loss
from coembed.models.mome import Vlmo, VlmoConfig
from coembed.objectives import FusionBatch

SMALL = {"image_size": 32, "patch_size": 8, "vocab_size": 40, "context_length": 12, "width": 32, "layers": 3, "vl_layers": 1,
         "heads": 2, "embed_dim": 16}


def fusion_batch(negatives: bool = True, seed: int = 0) -> FusionBatch:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 40, (4, 8), generator=g)
    tokens[:, 0], tokens[:, -1] = 1, 2
    tokens[1, 4:] = 0
    negs = torch.randint(5, 40, (4, 6), generator=g) if negatives else None
    return FusionBatch(images=torch.randn(4, 3, 32, 32, generator=g), tokens=tokens, image_ids=torch.tensor([0, 1, 2, 1]),
                       negatives=negs)


def model(seed: int = 0) -> Vlmo:
    torch.manual_seed(seed)
    return Vlmo(VlmoConfig(**SMALL))


def run(m, batch, seed: int = 0, weights=None) -> dict[str, torch.Tensor]:
    return vlmo.compute_losses(m, batch, progress=0.0, weights=weights or {}, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("negatives", [True, False])
def test_losses_are_finite_and_reach_every_parameter(negatives: bool) -> None:
    m = model()
    losses = run(m, fusion_batch(negatives))
    assert set(losses) == {"itc", "itm", "mlm"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_itc_is_clip_loss_of_the_dual_encoder_passes() -> None:
    m, batch = model(), fusion_batch()
    expected = clip_loss(m.encode_image(batch.images, normalize=True), m.encode_text(batch.tokens, normalize=True), m.temperature())
    torch.testing.assert_close(run(m, batch)["itc"], expected)


def test_itm_negatives_are_mined_from_the_itc_similarities(monkeypatch) -> None:
    seen = {}
    original = vlmo.sample_itm_negatives

    def spy(sim_i2t, sim_t2i, image_ids, *, generator):
        seen.update(sim_i2t=sim_i2t, sim_t2i=sim_t2i, image_ids=image_ids)
        out = original(sim_i2t, sim_t2i, image_ids, generator=generator)
        seen["out"] = out
        return out

    monkeypatch.setattr(vlmo, "sample_itm_negatives", spy)
    m, batch = model(), fusion_batch()
    run(m, batch)
    with torch.no_grad():
        img, txt = m.encode_image(batch.images, normalize=True), m.encode_text(batch.tokens, normalize=True)
        sim = m.temperature() * img @ txt.T
    torch.testing.assert_close(seen["sim_i2t"], sim)
    torch.testing.assert_close(seen["sim_t2i"], sim.T)
    assert torch.equal(seen["image_ids"], batch.image_ids)
    for neg in seen["out"]:
        assert (batch.image_ids[neg] != batch.image_ids).all()


def test_seeded_generator_reproduces_and_another_seed_differs() -> None:
    batch = fusion_batch()
    a, b, c = run(model(), batch, seed=3), run(model(), batch, seed=3), run(model(), batch, seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
