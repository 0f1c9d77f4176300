"""ViLT objective: the ITM pair batch, finite losses, gradients everywhere, seeded reproducibility."""

from __future__ import annotations

import pytest
import torch

from coembed.models.single_stream import Vilt, ViltConfig
from coembed.objectives import FusionBatch
from coembed.objectives.common import itm_pairs
from coembed.objectives.vilt import compute_losses

SMALL = {"image_size": 32, "patch_size": 8, "vocab_size": 40, "context_length": 12, "width": 32, "layers": 2, "heads": 2}


def fusion_batch(negatives: bool = True, seed: int = 0) -> FusionBatch:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 40, (4, 8), generator=g)
    tokens[:, 0], tokens[:, -1] = 1, 2
    tokens[2, 5:] = 0
    negs = torch.randint(5, 40, (4, 10), generator=g) if negatives else None
    return FusionBatch(images=torch.randn(4, 3, 32, 32, generator=g), tokens=tokens, image_ids=torch.tensor([7, 3, 7, 9]),
                       negatives=negs)


def model(seed: int = 0) -> Vilt:
    torch.manual_seed(seed)
    return Vilt(ViltConfig(**SMALL, stem="conv"))


def run(m, batch, seed: int = 0, weights=None) -> dict[str, torch.Tensor]:
    return compute_losses(m, batch, progress=0.5, weights=weights or {}, generator=torch.Generator().manual_seed(seed))


def test_itm_pairs_layout() -> None:
    batch = fusion_batch()
    neg_image, neg_text = torch.tensor([1, 0, 3, 2]), torch.tensor([3, 2, 1, 0])
    images, tokens, labels = itm_pairs(batch, neg_image, neg_text, pad_id=0)
    assert images.shape == (16, 3, 32, 32) and tokens.shape == (16, 10)
    assert labels.tolist() == [1] * 4 + [0] * 12
    for i in range(4):
        assert torch.equal(images[i], batch.images[i]) and torch.equal(tokens[i, :8], batch.tokens[i])
        assert torch.equal(images[4 + i], batch.images[neg_image[i]]) and torch.equal(tokens[4 + i, :8], batch.tokens[i])
        assert torch.equal(images[8 + i], batch.images[i]) and torch.equal(tokens[8 + i, :8], batch.tokens[neg_text[i]])
        assert torch.equal(images[12 + i], batch.images[i]) and torch.equal(tokens[12 + i], batch.negatives[i])
    assert (tokens[:12, 8:] == 0).all()


def test_itm_pairs_without_manifest_negatives() -> None:
    images, tokens, labels = itm_pairs(fusion_batch(negatives=False), torch.tensor([1, 0, 3, 2]), torch.tensor([3, 2, 1, 0]), 0)
    assert images.shape[0] == tokens.shape[0] == labels.shape[0] == 12 and int(labels.sum()) == 4


@pytest.mark.parametrize("negatives", [True, False])
def test_losses_are_finite_and_reach_every_parameter(negatives: bool) -> None:
    m = model()
    losses = run(m, fusion_batch(negatives))
    assert set(losses) == {"itm", "mlm"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_in_batch_negatives_never_show_the_same_image(monkeypatch) -> None:
    import coembed.objectives.vilt as vilt

    seen = {}
    original = vilt.matching_terms

    def spy(m, batch, neg_image, neg_text, *, with_wpa):
        seen["pairs"] = (neg_image, neg_text)
        return original(m, batch, neg_image, neg_text, with_wpa=with_wpa)

    monkeypatch.setattr(vilt, "matching_terms", spy)
    batch = fusion_batch()
    for seed in range(20):
        run(model(), batch, seed=seed)
        for neg in seen["pairs"]:
            assert (batch.image_ids[neg] != batch.image_ids).all()


def test_seeded_generator_reproduces_and_another_seed_differs() -> None:
    batch = fusion_batch()
    a, b, c = run(model(), batch, seed=1), run(model(), batch, seed=1), run(model(), batch, seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_wpa_is_computed_only_when_weighted_and_reaches_the_encoder() -> None:
    m = model()
    assert "wpa" not in run(m, fusion_batch())
    losses = run(m, fusion_batch(), weights={"wpa": 0.1})
    assert set(losses) == {"itm", "mlm", "wpa"} and torch.isfinite(losses["wpa"])
    losses["wpa"].backward()
    assert m.transformer.resblocks[0].attn.in_proj_weight.grad.abs().sum() > 0
    assert m.itm_head.fc.weight.grad is None  # WPA reads the states, not the matching head
