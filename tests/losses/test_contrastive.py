from __future__ import annotations

import math

import pytest
import torch

from coembed.losses.contrastive import clip_logits, clip_loss, negclip_loss, siglip_loss, triplet_loss

# ----------------------------------------------------------------------------- naive references
# Plain Python floats (float64) and explicit loops; gradients by central finite differences of these
# references, so nothing below shares code or autograd with the implementation under test.


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_clip(img, txt, scale):
    n = len(img)
    logits = [[scale * dot(img[i], txt[j]) for j in range(n)] for i in range(n)]
    i2t = sum(logsumexp(logits[i]) - logits[i][i] for i in range(n)) / n
    t2i = sum(logsumexp([logits[i][j] for i in range(n)]) - logits[j][j] for j in range(n)) / n
    return (i2t + t2i) / 2


def ref_siglip(img, txt, scale, bias):
    n = len(img)
    total = 0.0
    for i in range(n):
        for j in range(n):
            label = 1.0 if i == j else -1.0
            total -= log_sigmoid(label * (scale * dot(img[i], txt[j]) + bias))
    return total / n


def ref_triplet(img, txt, margin, hardest):
    n = len(img)
    s = [[dot(img[i], txt[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for a in range(n):
        caption_costs = [max(0.0, margin + s[a][j] - s[a][a]) for j in range(n) if j != a]
        image_costs = [max(0.0, margin + s[i][a] - s[a][a]) for i in range(n) if i != a]
        for costs in (caption_costs, image_costs):
            if costs:
                total += max(costs) if hardest else sum(costs)
    return total / n


def numeric_grad(f, params: list, h: float = 1e-6) -> list:
    """Central differences of ``f(*params)`` w.r.t. each param (a float or a list of float lists)."""
    grads = []
    for k, p in enumerate(params):

        def at(value, k=k):
            return f(*[value if m == k else q for m, q in enumerate(params)])

        if isinstance(p, float):
            grads.append((at(p + h) - at(p - h)) / (2 * h))
            continue
        g = [[0.0] * len(row) for row in p]
        for i, row in enumerate(p):
            for j in range(len(row)):
                plus = [list(r) for r in p]
                minus = [list(r) for r in p]
                plus[i][j] += h
                minus[i][j] -= h
                g[i][j] = (at(plus) - at(minus)) / (2 * h)
        grads.append(g)
    return grads


# ----------------------------------------------------------------------------- helpers


def random_pair(b: int = 7, d: int = 5, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(b, d, generator=gen, dtype=torch.float64), dim=1)
    return img.to(dtype), txt.to(dtype)


def leaf(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64).clone().requires_grad_(True)


def assert_close(actual: torch.Tensor, expected, tol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert torch.allclose(actual.detach().to(torch.float64), expected, atol=tol, rtol=0), (actual, expected)


# ----------------------------------------------------------------------------- values and gradients


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_clip_loss_matches_reference_values_and_gradients(scale):
    img, txt = random_pair()
    img_t, txt_t, scale_t = leaf(img), leaf(txt), leaf(scale)
    loss = clip_loss(img_t, txt_t, scale_t)
    loss.backward()
    ref_args = [img.tolist(), txt.tolist(), scale]
    assert loss.dtype == torch.float64 and loss.shape == ()
    assert_close(loss, ref_clip(*ref_args))
    g_img, g_txt, g_scale = numeric_grad(ref_clip, ref_args)
    assert_close(img_t.grad, g_img)
    assert_close(txt_t.grad, g_txt)
    assert_close(scale_t.grad, g_scale)


@pytest.mark.parametrize(("scale", "bias"), [(10.0, -10.0), (1.0, 0.0), (30.0, 2.5)])
def test_siglip_loss_matches_reference_values_and_gradients(scale, bias):
    img, txt = random_pair(seed=1)
    img_t, txt_t, scale_t, bias_t = leaf(img), leaf(txt), leaf(scale), leaf(bias)
    loss = siglip_loss(img_t, txt_t, scale_t, bias_t)
    loss.backward()
    ref_args = [img.tolist(), txt.tolist(), scale, bias]
    assert_close(loss, ref_siglip(*ref_args))
    grads = numeric_grad(ref_siglip, ref_args)
    for tensor, expected in zip([img_t, txt_t, scale_t, bias_t], grads):
        assert_close(tensor.grad, expected)


@pytest.mark.parametrize("hardest", [True, False])
@pytest.mark.parametrize("margin", [0.2, 0.5])
def test_triplet_loss_matches_reference_values_and_gradients(hardest, margin):
    img, txt = random_pair(seed=2)
    img_t, txt_t = leaf(img), leaf(txt)
    loss = triplet_loss(img_t, txt_t, margin=margin, hardest=hardest)
    loss.backward()

    def ref(i, t):
        return ref_triplet(i, t, margin, hardest)

    ref_args = [img.tolist(), txt.tolist()]
    assert loss.item() > 0  # the case must exercise active hinges
    assert_close(loss, ref(*ref_args))
    g_img, g_txt = numeric_grad(ref, ref_args)
    assert_close(img_t.grad, g_img)
    assert_close(txt_t.grad, g_txt)


def test_triplet_hardest_differs_from_sum_over_negatives():
    img, txt = random_pair(seed=3)
    hardest = triplet_loss(img, txt, margin=0.5, hardest=True)
    assert hardest > 0 and hardest < triplet_loss(img, txt, margin=0.5, hardest=False)


def test_clip_logits_are_scaled_similarities_in_both_directions():
    img, txt = random_pair(b=4, d=3, seed=4)
    per_image, per_text = clip_logits(img, txt, 2.0)
    for i in range(4):
        for j in range(4):
            expected = 2.0 * dot(img[i].tolist(), txt[j].tolist())
            assert abs(per_image[i, j].item() - expected) < 1e-12
            assert abs(per_text[j, i].item() - expected) < 1e-12


# ----------------------------------------------------------------------------- edge cases


def test_batch_of_one():
    img, txt = random_pair(b=1, seed=5)
    assert clip_loss(img, txt, 10.0).item() == 0.0  # a single class: log-softmax is exactly 0
    z = 10.0 * dot(img[0].tolist(), txt[0].tolist()) - 3.0
    assert_close(siglip_loss(img, txt, 10.0, -3.0), -log_sigmoid(z))
    img_t = leaf(img)
    loss = triplet_loss(img_t, txt)
    loss.backward()
    assert loss.item() == 0.0 and torch.all(img_t.grad == 0)


def test_identical_embeddings():
    b = 6
    row = torch.nn.functional.normalize(torch.arange(1.0, 5.0, dtype=torch.float64), dim=0)
    emb = row.repeat(b, 1)
    assert_close(clip_loss(emb, emb, 100.0), math.log(b))  # all logits equal: uniform softmax
    z = 100.0 * 1.0 - 10.0
    expected = -(b * log_sigmoid(z) + (b * b - b) * log_sigmoid(-z)) / b
    assert_close(siglip_loss(emb, emb, 100.0, -10.0), expected)
    assert_close(triplet_loss(emb, emb, margin=0.2), 2 * 0.2)  # every hinge equals the margin
    assert_close(triplet_loss(emb, emb, margin=0.2, hardest=False), 2 * (b - 1) * 0.2)


def test_perfectly_separated_batch_has_zero_triplet_loss():
    emb = torch.eye(4, dtype=torch.float64)
    assert triplet_loss(emb, emb, margin=0.5).item() == 0.0


def test_clip_scale_gradient_is_finite_at_scale_100_in_float32():
    img, txt = random_pair(b=64, d=32, seed=6, dtype=torch.float32)
    scale = torch.tensor(100.0, requires_grad=True)
    img.requires_grad_(True)
    loss = clip_loss(img, txt, scale)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scale.grad) and torch.isfinite(img.grad).all()
    assert abs(loss.item() - ref_clip(img.tolist(), txt.tolist(), 100.0)) < 1e-3


def test_half_precision_inputs_give_float32_losses_close_to_reference():
    img, txt = random_pair(b=8, d=16, seed=7)
    ref = [ref_clip(img.tolist(), txt.tolist(), 50.0), ref_siglip(img.tolist(), txt.tolist(), 10.0, -5.0)]
    img16, txt16 = img.to(torch.bfloat16), txt.to(torch.bfloat16)
    losses = [clip_loss(img16, txt16, torch.tensor(50.0)), siglip_loss(img16, txt16, 10.0, -5.0)]
    losses.append(triplet_loss(img16, txt16))
    assert all(loss.dtype == torch.float32 for loss in losses)
    # bf16 keeps ~3 significant digits of each similarity; the scale multiplies that error
    assert abs(losses[0].item() - ref[0]) < 0.3 and abs(losses[1].item() - ref[1]) < 0.3


def test_losses_under_cpu_autocast_are_float32():
    img, txt = random_pair(b=8, d=16, seed=8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [clip_loss(img, txt, torch.tensor(20.0)), siglip_loss(img, txt, 10.0, -10.0)]
        losses.append(triplet_loss(img, txt))
    assert all(loss.dtype == torch.float32 for loss in losses)


SHAPE_ERRORS = [
    (
        torch.zeros(4, 8),
        torch.zeros(5, 8),
        r"image_emb and text_emb must have the same shape, got \(4, 8\) and \(5, 8\)",
    ),
    (torch.zeros(4, 8), torch.zeros(4, 7), r"same shape, got \(4, 8\) and \(4, 7\)"),
    (torch.zeros(8), torch.zeros(4, 8), r"image_emb must be 2-D \(batch, dim\), got shape \(8,\)"),
    (torch.zeros(4, 8), torch.zeros(2, 4, 8), r"text_emb must be 2-D"),
    (torch.zeros(0, 8), torch.zeros(0, 8), r"at least one pair"),
]


@pytest.mark.parametrize(("img", "txt", "message"), SHAPE_ERRORS)
def test_shape_errors_name_the_argument(img, txt, message):
    with pytest.raises(ValueError, match=message):
        clip_loss(img, txt, 1.0)
    with pytest.raises(ValueError, match=message):
        siglip_loss(img, txt, 1.0, 0.0)
    with pytest.raises(ValueError, match=message):
        triplet_loss(img, txt)
    with pytest.raises(ValueError, match=message):
        clip_logits(img, txt, 1.0)


def test_scalar_and_margin_errors():
    img, txt = random_pair(b=3, d=2)
    with pytest.raises(ValueError, match=r"logit_scale must be a scalar, got a tensor of shape \(3,\)"):
        clip_loss(img, txt, torch.ones(3))
    with pytest.raises(ValueError, match=r"logit_bias must be a scalar"):
        siglip_loss(img, txt, 1.0, torch.zeros(2))
    with pytest.raises(ValueError, match=r"margin must be >= 0, got -0.1"):
        triplet_loss(img, txt, margin=-0.1)


# ----------------------------------------------------------------------------- NegCLIP
def ref_negclip(img, txt, neg, scale):
    n = len(img)
    logits = [[scale * dot(img[i], t) for t in txt + neg] for i in range(n)]
    i2t = sum(logsumexp(logits[i]) - logits[i][i] for i in range(n)) / n
    t2i = sum(logsumexp([logits[i][j] for i in range(n)]) - logits[j][j] for j in range(n)) / n
    return (i2t + t2i) / 2


@pytest.mark.parametrize(("scale", "n_neg"), [(14.3, 3), (1.0, 9), (100.0, 1)])
def test_negclip_loss_matches_reference_values_and_gradients(scale, n_neg):
    img, txt = random_pair()
    neg, _ = random_pair(b=n_neg, seed=1)
    img_t, txt_t, neg_t, scale_t = leaf(img), leaf(txt), leaf(neg), leaf(scale)
    loss = negclip_loss(img_t, txt_t, neg_t, scale_t)
    loss.backward()
    ref_args = [img.tolist(), txt.tolist(), neg.tolist(), scale]
    assert_close(loss, ref_negclip(*ref_args))
    for got, want in zip((img_t, txt_t, neg_t, scale_t), numeric_grad(ref_negclip, ref_args)):
        assert_close(got.grad, want)


def test_negclip_without_negatives_is_clip_and_negatives_raise_the_loss():
    img, txt = random_pair()
    assert_close(negclip_loss(img, txt, torch.zeros(0, 5, dtype=torch.float64), 14.3), clip_loss(img, txt, 14.3).item())
    assert negclip_loss(img, txt, txt[:2] * 0.9, 14.3) > clip_loss(img, txt, 14.3)
    with pytest.raises(ValueError, match=r"negative_emb must be \(N, 5\)"):
        negclip_loss(img, txt, torch.zeros(3, 4, dtype=torch.float64), 14.3)
