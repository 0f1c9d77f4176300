"""Property-based fuzzing of the contrastive losses against naive float64 references (hypothesis).

The references are written from the papers' formulas with Python loops over pairs (math.log, math.exp
via a stable log-sum-exp), not with the library's code: CLIP's symmetric InfoNCE and SigLIP's pairwise
sigmoid loss. Properties: equal to the reference on random shapes, scales and biases; finite for
extreme scales (logits up to 1e4); symmetric in swapping images and texts; chunked == unchunked for
any chunk size (loss and gradients); gradients equal torch.autograd through the reference.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coembed.losses.chunked import chunked_clip_loss, chunked_siglip_loss
from coembed.losses.contrastive import clip_loss, siglip_loss

CASES: Counter[str] = Counter()


def fuzz(max_examples: int):
    """The CI profile: reproducible (derandomize), no per-example deadline, a fixed example budget."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _lse(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def naive_clip(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    b = len(img)
    s = [[scale * float(img[i] @ txt[j]) for j in range(b)] for i in range(b)]
    i2t = sum(_lse(s[i]) - s[i][i] for i in range(b)) / b
    t2i = sum(_lse([s[i][j] for i in range(b)]) - s[j][j] for j in range(b)) / b
    return (i2t + t2i) / 2


def naive_siglip(img: torch.Tensor, txt: torch.Tensor, scale: float, bias: float) -> float:
    b = len(img)
    # -log sigmoid(z * l) = softplus(-z * l), label z = +1 on the diagonal, -1 elsewhere
    return sum(_softplus(-(1 if i == j else -1) * (scale * float(img[i] @ txt[j]) + bias))
               for i in range(b) for j in range(b)) / b


@st.composite
def pair(draw, max_batch: int = 12):
    b, d = draw(st.integers(1, max_batch)), draw(st.integers(1, 8))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    img = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    if draw(st.booleans()):
        txt = img.clone()  # perfectly aligned: the extreme-scale losses go to 0 without underflow trouble
    return img, txt


SCALES = st.one_of(st.floats(0.0, 100.0), st.sampled_from([1e-6, 1.0, 14.3, 100.0, 1e3, 1e4]))
BIASES = st.one_of(st.floats(-20.0, 20.0), st.sampled_from([-1e3, 0.0, 1e3]))


@fuzz(100)
@given(p=pair(), scale=SCALES, chunk=st.integers(1, 13))
def test_clip_loss_equals_naive_reference_and_chunked(p, scale: float, chunk: int) -> None:
    CASES["clip"] += 1
    img, txt = p
    ref = naive_clip(img, txt, scale)
    for loss in (clip_loss(img, txt, scale), chunked_clip_loss(img, txt, scale, chunk_size=chunk),
                 clip_loss(img.float(), txt.float(), scale)):
        assert torch.isfinite(loss)
        assert float(loss) == pytest.approx(ref, rel=1e-4 if loss.dtype == torch.float32 else 1e-9, abs=1e-4)
    assert float(clip_loss(txt, img, scale)) == pytest.approx(ref, rel=1e-9, abs=1e-9)  # symmetric


@fuzz(100)
@given(p=pair(), scale=SCALES, bias=BIASES, chunk=st.integers(1, 13))
def test_siglip_loss_equals_naive_reference_and_chunked(p, scale: float, bias: float, chunk: int) -> None:
    CASES["siglip"] += 1
    img, txt = p
    ref = naive_siglip(img, txt, scale, bias)
    for loss in (siglip_loss(img, txt, scale, bias), chunked_siglip_loss(img, txt, scale, bias, chunk_size=chunk),
                 siglip_loss(img.float(), txt.float(), scale, bias)):
        assert torch.isfinite(loss)
        assert float(loss) == pytest.approx(ref, rel=1e-4 if loss.dtype == torch.float32 else 1e-9, abs=1e-4)
    assert float(siglip_loss(txt, img, scale, bias)) == pytest.approx(ref, rel=1e-9, abs=1e-9)


def _grads(fn, img, txt, *scalars):
    leaves = [t.clone().requires_grad_(True) for t in (img, txt, *scalars)]
    fn(*leaves).backward()
    return [t.grad for t in leaves]


def _naive_clip_torch(img, txt, scale):
    """The reference formula in torch (float64) so autograd can differentiate it."""
    s = scale * img @ txt.T
    diag = s.diagonal()
    return ((torch.logsumexp(s, 1) - diag).mean() + (torch.logsumexp(s, 0) - diag).mean()) / 2


def _naive_siglip_torch(img, txt, scale, bias):
    z = 2 * torch.eye(len(img), dtype=img.dtype) - 1
    return torch.nn.functional.softplus(-z * (scale * img @ txt.T + bias)).sum() / len(img)


@fuzz(30)
@given(p=pair(max_batch=9), scale=st.floats(0.5, 50.0), bias=st.floats(-10.0, 10.0), chunk=st.integers(1, 9))
def test_gradients_match_autograd_on_the_reference(p, scale: float, bias: float, chunk: int) -> None:
    CASES["gradients"] += 1
    img, txt = p
    s, b = torch.tensor(scale, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64)
    want = _grads(_naive_clip_torch, img, txt, s)
    for fn in (clip_loss, lambda i, t, sc: chunked_clip_loss(i, t, sc, chunk_size=chunk)):
        for got, ref in zip(_grads(fn, img, txt, s), want):
            torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-9)  # float64; sigmoid near saturation differs by ~1e-9
    want = _grads(_naive_siglip_torch, img, txt, s, b)
    for fn in (siglip_loss, lambda i, t, sc, bi: chunked_siglip_loss(i, t, sc, bi, chunk_size=chunk)):
        for got, ref in zip(_grads(fn, img, txt, s, b), want):
            torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-9)  # float64; sigmoid near saturation differs by ~1e-9


def test_zz_report_cases() -> None:
    print("\nfuzz cases (losses):", dict(CASES), "total", sum(CASES.values()))
