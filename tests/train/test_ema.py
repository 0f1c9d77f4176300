"""The weight EMA against diffusers' ``EMAModel`` and a naive loop, its swap, and its resume errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from coembed.train.ema import RAW_PREFIX, UPDATES_KEY, WeightEMA, ema_decay_at


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))
    model[1].requires_grad_(False)  # a frozen part: not averaged
    return model


def _perturb(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator))


def test_updates_equal_diffusers_ema_model() -> None:
    training_utils = pytest.importorskip("diffusers.training_utils")
    model = _model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    ours, theirs = WeightEMA(model, 0.9), training_utils.EMAModel(trainable, decay=0.9, foreach=False)
    for step in range(30):  # past the warm-up, where min(decay, (1 + k) / (10 + k)) reaches the decay
        _perturb(model, step)
        ours.update(model)
        theirs.step(trainable)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, shadow in zip(names, theirs.shadow_params):
        torch.testing.assert_close(ours.shadow[name], shadow, rtol=1e-6, atol=1e-6, msg=name)
    assert set(ours.shadow) == set(names)  # the frozen LayerNorm is not averaged


def test_updates_equal_the_naive_recurrence() -> None:
    model = _model()
    ema = WeightEMA(model, 0.95)
    expected = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for update in range(1, 40):
        _perturb(model, update)
        ema.update(model)
        d = 0.0 if update == 1 else min(0.95, update / (9 + update))
        for name, p in model.named_parameters():
            if name in expected:
                expected[name] = d * expected[name] + (1 - d) * p.detach()
    for name, value in expected.items():
        torch.testing.assert_close(ema.shadow[name], value, msg=name)
    assert ema_decay_at(0.95, 1) == 0.0 and ema_decay_at(0.95, 2) == pytest.approx(2 / 11) and ema_decay_at(0.95, 10_000) == 0.95


def test_swapped_in_holds_the_ema_weights_then_restores_the_raw_ones_even_on_error() -> None:
    model = _model()
    ema = WeightEMA(model, 0.9)
    _perturb(model, 1)
    ema.update(model)
    _perturb(model, 2)
    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError), ema.swapped_in(model):
        for name, shadow in ema.shadow.items():
            assert torch.equal(dict(model.named_parameters())[name], shadow)
        raise RuntimeError("boom")
    assert all(torch.equal(p, raw[n]) for n, p in model.named_parameters())


def test_resume_restores_raw_weights_and_count_and_names_what_is_missing() -> None:
    model = _model()
    ema = WeightEMA(model, 0.9)
    for step in range(3):
        _perturb(model, step)
        ema.update(model)
    saved = ema.raw_tensors(model)
    with ema.swapped_in(model):  # as a checkpoint is loaded: the model file holds the EMA weights
        loaded = _model()
        loaded.load_state_dict(model.state_dict())
    resumed = WeightEMA.resume(loaded, 0.9, saved, "ckpt")
    assert resumed.updates == 3 and all(torch.equal(resumed.shadow[n], ema.shadow[n]) for n in ema.shadow)
    assert all(torch.equal(p, q) for p, q in zip(loaded.parameters(), model.parameters()))
    with pytest.raises(ValueError, match=f"ckpt: .* lacks {RAW_PREFIX}0.bias, {RAW_PREFIX}0.weight"):
        WeightEMA.resume(_model(), 0.9, {UPDATES_KEY: torch.tensor(3)}, "ckpt")
    with pytest.raises(ValueError, match="ema_decay must be in"):
        WeightEMA(model, 1.0)
