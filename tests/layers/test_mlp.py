"""Mlp and QuickGELU vs their formulas written out in numpy / math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coembed.layers.mlp import Mlp, QuickGELU


def test_quick_gelu_formula() -> None:
    x = np.linspace(-8, 8, 101)
    expected = x / (1 + np.exp(-1.702 * x))
    got = QuickGELU()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def _reference_mlp(mlp: Mlp, x: torch.Tensor, act) -> np.ndarray:
    w1, b1 = mlp.c_fc.weight.detach().double().numpy(), mlp.c_fc.bias.detach().double().numpy()
    w2, b2 = mlp.c_proj.weight.detach().double().numpy(), mlp.c_proj.bias.detach().double().numpy()
    h = x.double().numpy() @ w1.T + b1
    return act(h) @ w2.T + b2


def _quick_gelu(h: np.ndarray) -> np.ndarray:
    return h / (1 + np.exp(-1.702 * h))


def _exact_gelu(h: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * h * (1 + erf(h / math.sqrt(2)))


@pytest.mark.parametrize("quick,act", [(True, _quick_gelu), (False, _exact_gelu)])
def test_matches_formula(quick: bool, act) -> None:
    torch.manual_seed(0)
    mlp = Mlp(12, 40, quick_gelu=quick)
    x = torch.randn(3, 5, 12)
    got = mlp(x).detach().double().numpy()
    np.testing.assert_allclose(got, _reference_mlp(mlp, x, act), rtol=1e-5, atol=1e-5)


def test_quick_and_exact_gelu_differ() -> None:
    # OpenAI weights need QuickGELU; the flag must actually change the activation.
    torch.manual_seed(0)
    quick = Mlp(8, 32, quick_gelu=True)
    exact = Mlp(8, 32, quick_gelu=False)
    exact.load_state_dict(quick.state_dict())
    x = torch.randn(4, 8) * 3
    assert not torch.allclose(quick(x), exact(x), atol=1e-4)


def test_state_dict_layout() -> None:
    shapes = {k: tuple(v.shape) for k, v in Mlp(16, 64).state_dict().items()}
    assert shapes == {"c_fc.weight": (64, 16), "c_fc.bias": (64,), "c_proj.weight": (16, 64), "c_proj.bias": (16,)}
