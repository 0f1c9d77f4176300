"""Chunked (memory-linear) contrastive losses: same values and gradients as the naive losses.

The naive losses of coembed.losses.contrastive are themselves checked against plain-Python references
in test_contrastive.py; here the chunked versions must reproduce them for every chunk layout, pass
torch's numerical gradcheck, and never allocate anything of batch x batch size.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from coembed.losses.chunked import chunked_clip_loss, chunked_siglip_loss, default_chunk_size
from coembed.losses.contrastive import clip_loss, siglip_loss


def _pair(batch: int, dim: int, dtype=torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(batch, dim, generator=g, dtype=dtype), dim=1)
    txt = F.normalize(img + 0.8 * torch.randn(batch, dim, generator=g, dtype=dtype), dim=1)  # correlated pairs
    return img.requires_grad_(), txt.requires_grad_()


def _loss_and_grads(fn, params):
    loss = fn()
    return loss.detach(), torch.autograd.grad(loss, params)


def _both(kind: str, img, txt, scale, bias, chunk):
    if kind == "clip":
        return (lambda: clip_loss(img, txt, scale)), (lambda: chunked_clip_loss(img, txt, scale, chunk)), [img, txt, scale]
    return ((lambda: siglip_loss(img, txt, scale, bias)), (lambda: chunked_siglip_loss(img, txt, scale, bias, chunk)),
            [img, txt, scale, bias])


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize(("batch", "chunk"), [(1, None), (7, 3), (16, 16), (17, 1), (33, 100), (64, None)])
def test_float64_matches_the_naive_loss_for_every_chunk_layout(kind: str, batch: int, chunk: int | None) -> None:
    img, txt = _pair(batch, 8)
    scale = torch.tensor(14.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-5.0, dtype=torch.float64, requires_grad=True)
    naive, chunked, params = _both(kind, img, txt, scale, bias, chunk)
    want, want_grads = _loss_and_grads(naive, params)
    got, got_grads = _loss_and_grads(chunked, params)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for g, w in zip(got_grads, want_grads):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_gradcheck_against_finite_differences(kind: str) -> None:
    img, txt = _pair(9, 5, seed=1)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    if kind == "clip":
        assert torch.autograd.gradcheck(lambda i, t, s: chunked_clip_loss(i, t, s, 4), (img, txt, scale))
    else:
        assert torch.autograd.gradcheck(lambda i, t, s, b: chunked_siglip_loss(i, t, s, b, 4), (img, txt, scale, bias))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_batch_4096_float32_within_1e_5_of_the_naive_loss(kind: str) -> None:
    img, txt = _pair(4096, 512, dtype=torch.float32, seed=2)
    scale = torch.tensor(100.0, requires_grad=True)  # CLIP's maximum scale: the sharpest softmax
    bias = torch.tensor(-10.0, requires_grad=True)
    naive, chunked, params = _both(kind, img, txt, scale, bias, 500)  # 500: the last block is short
    want, want_grads = _loss_and_grads(naive, params)
    got, got_grads = _loss_and_grads(chunked, params)
    assert abs(got.item() - want.item()) <= 1e-5 * max(1.0, abs(want.item()))
    for name, g, w in zip(["image", "text", "scale", "bias"], got_grads, want_grads):
        scale_of = max(1.0, w.abs().max().item())
        assert (g - w).abs().max().item() <= 1e-5 * scale_of, name


def test_float_scale_is_a_constant_and_1_element_scale_keeps_its_shape() -> None:
    img, txt = _pair(6, 4)
    torch.testing.assert_close(chunked_clip_loss(img, txt, 5.0, 2), clip_loss(img, txt, 5.0), rtol=0, atol=1e-12)
    scale = torch.tensor([5.0], dtype=torch.float64, requires_grad=True)
    bias = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    chunked_siglip_loss(img, txt, scale, bias, 2).backward()
    assert scale.grad.shape == (1,) and bias.grad.shape == (1,)


def test_half_precision_inputs_give_float32_losses_and_gradients_in_the_input_dtype() -> None:
    img, txt = _pair(32, 16, dtype=torch.float32, seed=3)
    img16, txt16 = img.detach().bfloat16().requires_grad_(), txt.detach().bfloat16().requires_grad_()
    loss = chunked_clip_loss(img16, txt16, torch.tensor(10.0), 8)
    assert loss.dtype == torch.float32
    loss.backward()
    assert img16.grad.dtype == torch.bfloat16
    reference = clip_loss(img16.detach().float(), txt16.detach().float(), 10.0)
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-5)


def test_bad_arguments_name_what_is_wrong() -> None:
    img, txt = _pair(4, 3)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunked_clip_loss(img, txt, 1.0, 0)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_siglip_loss(img, txt, 1.0, 0.0, True)
    with pytest.raises(ValueError, match="same shape"):
        chunked_clip_loss(img, txt[:3], 1.0)
    with pytest.raises(ValueError, match="logit_bias must be a scalar"):
        chunked_siglip_loss(img, txt, 1.0, torch.zeros(2))


def test_default_chunk_keeps_one_block_near_16m_entries() -> None:
    assert default_chunk_size(65536) == 256 and default_chunk_size(1000) == 1000 and default_chunk_size(1) == 1


_PEAK_SCRIPT = """
import json, resource, sys, torch
from coembed.losses.chunked import chunked_clip_loss, chunked_siglip_loss
torch.set_num_threads(1)
batch, dim, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
img = torch.nn.functional.normalize(torch.randn(batch, dim), dim=1).requires_grad_()
txt = torch.nn.functional.normalize(torch.randn(batch, dim), dim=1).requires_grad_()
scale, bias = torch.tensor(10.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss = chunked_clip_loss(img, txt, scale) if kind == "clip" else chunked_siglip_loss(img, txt, scale, bias)
loss.backward()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_mib": (after - before) / 1024}))
"""


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_peak_memory_stays_far_below_one_logit_matrix(kind: str) -> None:
    """Batch 16,384: one float32 logit matrix alone is 1 GiB, the naive loss keeps several."""
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, "16384", "32", kind], capture_output=True, text=True,
                         check=True, timeout=300)
    extra = json.loads(out.stdout.strip().splitlines()[-1])["extra_mib"]
    assert extra < 400, f"{kind}: {extra:.0f} MiB above the inputs"
