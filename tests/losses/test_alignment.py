"""WPA's IPOT optimal transport against a per-pair loop over the unpadded matrices in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coembed.losses.alignment import cosine_cost, ipot, wpa_distance, wpa_loss


def naive_ipot(cost: np.ndarray, beta: float, iterations: int, inner: int) -> np.ndarray:
    """IPOT for one pair without padding, scalar loops (m words, n patches, uniform marginals), in
    ViLT's order: the patch factors from the word factors (starting at 1/m), then the word factors."""
    m, n = cost.shape
    kernel = np.exp(-cost / beta)
    plan = np.ones((m, n))
    sigma = [1.0 / m] * m
    delta = [0.0] * n
    for _ in range(iterations):
        q = kernel * plan
        for _ in range(inner):
            delta = [1.0 / (n * sum(q[i, j] * sigma[i] for i in range(m))) for j in range(n)]
            sigma = [1.0 / (m * sum(q[i, j] * delta[j] for j in range(n))) for i in range(m)]
        plan = np.array([[sigma[i] * q[i, j] * delta[j] for j in range(n)] for i in range(m)])
    return plan


def naive_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([[1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for b in y] for a in x])


def padded_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text, image = torch.randn(3, 6, 8, generator=g, dtype=torch.float64), torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    text_mask = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    image_mask = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 1], [1, 1, 0, 1, 1]], dtype=torch.bool)
    return text, image, text_mask, image_mask


@pytest.mark.parametrize("iterations,inner", [(1, 1), (5, 2), (50, 1)])
def test_ipot_matches_per_pair_loop_on_unpadded_matrices(iterations: int, inner: int) -> None:
    text, image, tm, im = padded_batch()
    plan = ipot(cosine_cost(text, image), tm, im, beta=0.5, iterations=iterations, inner=inner)
    for b in range(3):
        rows, cols = tm[b].nonzero().flatten(), im[b].nonzero().flatten()
        cost = naive_cost(text[b, rows].numpy(), image[b, cols].numpy())
        expected = naive_ipot(cost, 0.5, iterations, inner)
        np.testing.assert_allclose(plan[b][rows][:, cols].numpy(), expected, rtol=1e-6, atol=1e-9)
        outside = plan[b].clone()
        outside[rows[:, None], cols] = 0
        assert outside.abs().max() == 0


def test_plan_marginals_are_uniform() -> None:
    text, image, tm, im = padded_batch()
    plan = ipot(cosine_cost(text, image), tm, im, iterations=200)
    for b in range(3):
        m, n = int(tm[b].sum()), int(im[b].sum())
        np.testing.assert_allclose(plan[b].sum(1)[tm[b]].numpy(), 1 / m, rtol=1e-6)
        np.testing.assert_allclose(plan[b].sum(0)[im[b]].numpy(), 1 / n, rtol=1e-3)


def test_distance_is_cost_times_plan_and_differentiable() -> None:
    text, image, tm, im = padded_batch()
    text.requires_grad_(True)
    d = wpa_distance(text, image, tm, im, iterations=10)
    plan = ipot(cosine_cost(text.detach(), image), tm, im, iterations=10)
    torch.testing.assert_close(d.detach(), (cosine_cost(text.detach(), image) * plan).sum(dim=(1, 2)).float())
    d.sum().backward()
    assert text.grad[~tm].abs().max() == 0 and text.grad[tm].abs().max() > 0


def test_identical_sides_are_closer_than_random_ones() -> None:
    text, image, tm, _ = padded_batch()
    same = wpa_distance(text, text, tm, tm)
    other = wpa_distance(text, torch.randn_like(text), tm, tm)
    assert (same < other).all()


def test_wpa_loss_sign() -> None:
    d = torch.tensor([0.1, 0.5, 0.3, 0.9])
    assert wpa_loss(d, torch.tensor([1, 0, 1, 0])).item() == pytest.approx((0.1 + 0.3 - 0.5 - 0.9) / 4)


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="ipot needs cost"):
        ipot(torch.zeros(2, 3, 4), torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one real position"):
        ipot(torch.zeros(1, 2, 2), torch.zeros(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool))
