"""AdamW parameter groups and the warm-up + cosine schedule, against hand-written references."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from coembed.presets import create_model
from coembed.train.optim import build_optimizer, cosine_lr, param_groups, set_lr

# The tensors of a dual encoder that are embeddings in the CLIP sense (OpenCLIP names).
EMBEDDINGS = {"token_embedding.weight", "positional_embedding", "visual.positional_embedding", "visual.class_embedding"}


# The tiny test model (as tests/conftest.py's TINY_MODEL), as create_model keywords.
TINY = {"vision__layers": 1, "text__layers": 1, "vision__width": 64, "vision__heads": 2, "text__width": 64,
        "text__heads": 2, "embed_dim": 32}


def _model(preset: str = "tiny") -> nn.Module:
    return create_model(preset, **TINY)


def _expected_no_decay(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.dim() <= 1 or n in EMBEDDINGS or n in ("logit_scale", "logit_bias")}


def _names(model: nn.Module, params: list[torch.Tensor]) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


@pytest.mark.parametrize("preset", ["tiny", "tiny-patch", "tiny-siglip"])
def test_groups_split_decay_exactly(preset: str) -> None:
    model = _model(preset)
    decay, no_decay = param_groups(model, weight_decay=0.2)
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0
    assert set(_names(model, no_decay["params"])) == _expected_no_decay(model)
    all_names = {n for n, _ in model.named_parameters()}
    assert set(_names(model, decay["params"])) == all_names - _expected_no_decay(model)
    # Sanity of the reference itself: the decayed set is the 2-D+ weight matrices only.
    patch_embed = "visual.conv1.weight" if preset == "tiny-patch" else "visual.stem.layers.0.weight"
    assert {patch_embed, "visual.proj", "text_projection"} <= set(_names(model, decay["params"]))
    assert "visual.stem.layers.1.weight" not in set(_names(model, decay["params"]))  # batch-norm gain
    assert ("logit_bias" in set(_names(model, no_decay["params"]))) == (preset == "tiny-siglip")


def test_every_trainable_param_in_exactly_one_group() -> None:
    model = _model()
    model.visual.stem.layers[0].weight.requires_grad_(False)
    model.ln_final.bias.requires_grad_(False)
    groups = param_groups(model, weight_decay=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    assert set(ids) == set(trainable)


def test_plain_module_without_no_weight_decay() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Embedding(5, 4))
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert _names(model, decay["params"]) == ["0.weight", "2.weight"]
    assert _names(model, no_decay["params"]) == ["0.bias", "1.weight", "1.bias"]


def test_optimizer_decays_only_the_decay_group() -> None:
    # With zero gradients AdamW's update is zero, so only decoupled weight decay moves a
    # parameter: p <- p * (1 - lr * wd).
    model = _model()
    lr, wd = 0.1, 0.5
    opt = build_optimizer(model, lr=lr, weight_decay=wd, betas=(0.9, 0.98), eps=1e-6)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        expected = before[name] if name in _expected_no_decay(model) else before[name] * (1 - lr * wd)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0, msg=name)


def test_set_lr_sets_every_group() -> None:
    opt = build_optimizer(_model(), lr=1.0, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]


# ----------------------------------------------------------------------------- schedule
def naive_lr(step: int, base: float, warmup: int, total: int, floor: float = 0.0) -> float:
    """OpenCLIP's schedule written out: linear warm-up to base over `warmup` steps, then
    half a cosine period from base down to `floor` at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    if step >= total:
        return floor
    t = (step - warmup) / (total - warmup)
    return floor + (base - floor) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1e-4),  # warm-up start: one tenth of the way
        (4, 5e-4),
        (9, 1e-3),  # warm-up end: full rate
        (10, 1e-3),  # cosine start
        (35, 1e-3 * (1 + math.cos(math.pi / 4)) / 2),  # a quarter of the decay
        (60, 5e-4),  # middle of the decay
        (109, 1e-3 * (1 + math.cos(math.pi * 99 / 100)) / 2),  # last step
        (110, 0.0),  # end
        (500, 0.0),  # past the end stays at the floor
    ],
)
def test_cosine_lr_hand_values(step: int, expected: float) -> None:
    got = cosine_lr(step, base_lr=1e-3, warmup_steps=10, total_steps=110)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-18)
    assert got == pytest.approx(naive_lr(step, 1e-3, 10, 110), rel=1e-12, abs=1e-18)


@pytest.mark.parametrize(("warmup", "total", "floor"), [(0, 50, 0.0), (7, 50, 1e-5), (3, 4, 0.0), (20, 1000, 2e-4)])
def test_cosine_lr_matches_naive_everywhere(warmup: int, total: int, floor: float) -> None:
    for step in range(total + 3):
        got = cosine_lr(step, base_lr=2e-3, warmup_steps=warmup, total_steps=total, min_lr=floor)
        assert got == pytest.approx(naive_lr(step, 2e-3, warmup, total, floor), rel=1e-12, abs=1e-15), step


def test_cosine_lr_with_min_lr_mid_and_end() -> None:
    kw = dict(base_lr=1e-3, warmup_steps=0, total_steps=100, min_lr=1e-4)
    assert cosine_lr(0, **kw) == pytest.approx(1e-3)
    assert cosine_lr(50, **kw) == pytest.approx(1e-4 + (1e-3 - 1e-4) / 2)
    assert cosine_lr(100, **kw) == pytest.approx(1e-4)


def test_cosine_lr_shape() -> None:
    lrs = [cosine_lr(s, base_lr=1.0, warmup_steps=10, total_steps=60) for s in range(60)]
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # rising during warm-up
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # never rising afterwards
    assert max(lrs) == pytest.approx(1.0) and min(lrs) > 0
