"""The trainer's SDPA kernel policy: which kernel each setting picks, and that both give the same gradients."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend

import coembed.layers.kernels as kernels
from coembed.layers.kernels import attention_kernel
from coembed.presets import create_model


@pytest.fixture
def picked(monkeypatch: pytest.MonkeyPatch) -> list:
    """The backends ``attention_kernel`` hands to ``sdpa_kernel`` (empty: PyTorch's own choice)."""
    seen: list = []
    real = kernels.sdpa_kernel

    def spy(backend):
        seen.append(backend)
        return real(backend)

    monkeypatch.setattr(kernels, "sdpa_kernel", spy)
    return seen


@pytest.mark.parametrize(("name", "device", "bf16", "expected"), [
    ("auto", "cpu", True, [SDPBackend.MATH]),
    ("auto", "cpu", False, []),
    ("auto", "cuda", True, []),
    ("math", "cpu", False, [SDPBackend.MATH]),
    ("math", "cuda", True, [SDPBackend.MATH]),
    ("fused", "cpu", True, []),
])
def test_policy_picks_the_documented_kernel(picked: list, name: str, device: str, bf16: bool, expected: list) -> None:
    with attention_kernel(name, device, bf16=bf16):
        pass
    assert picked == expected


def test_unknown_kernel_is_named() -> None:
    with pytest.raises(ValueError, match="attention kernel must be one of .*'flash'"):
        with attention_kernel("flash", "cpu", bf16=True):
            pass


def _grads(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with attention_kernel(name, "cpu", bf16=False):
        out = model(images, tokens)
        (out.image_emb @ out.text_emb.T).logsumexp(dim=1).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_math_and_fused_give_the_same_gradients_in_fp32() -> None:
    # Both towers, causal text attention included: the policy may change speed, never the result.
    torch.manual_seed(0)
    model = create_model("tiny")
    images, tokens = torch.randn(6, 3, 64, 64), torch.randint(1, 1000, (6, 12))
    math, fused = _grads(model, images, tokens, "math"), _grads(model, images, tokens, "fused")
    assert math.keys() == fused.keys() and any("attn.in_proj_weight" in n for n in math)
    for n in math:
        torch.testing.assert_close(math[n], fused[n], atol=1e-5, rtol=1e-4, msg=n)
