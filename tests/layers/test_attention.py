"""Attention vs a naive per-head loop and vs ``torch.nn.MultiheadAttention`` with the same weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from coembed.layers.attention import Attention


def naive_attention(attn: Attention, x: torch.Tensor, causal: bool, keep: list[list[bool]] | None = None) -> np.ndarray:
    """softmax(Q K^T / sqrt(d)) V per batch row and head, in float64 numpy with explicit loops;
    ``keep[b][j]`` False hides key j of row b."""
    w_in = attn.in_proj_weight.detach().double().numpy()
    b_in = attn.in_proj_bias.detach().double().numpy()
    w_out = attn.out_proj.weight.detach().double().numpy()
    b_out = attn.out_proj.bias.detach().double().numpy()
    xs = x.detach().double().numpy()
    B, T, C = xs.shape
    hd = C // attn.heads
    out = np.zeros((B, T, C))
    for b in range(B):
        q = xs[b] @ w_in[:C].T + b_in[:C]
        k = xs[b] @ w_in[C : 2 * C].T + b_in[C : 2 * C]
        v = xs[b] @ w_in[2 * C :].T + b_in[2 * C :]
        heads_out = np.zeros((T, C))
        for h in range(attn.heads):
            cols = slice(h * hd, (h + 1) * hd)
            for i in range(T):
                visible = [j for j in (range(i + 1) if causal else range(T)) if keep is None or keep[b][j]]
                scores = [float(q[i, cols] @ k[j, cols]) / math.sqrt(hd) for j in visible]
                top = max(scores)
                weights = [math.exp(s - top) for s in scores]
                total = sum(weights)
                heads_out[i, cols] = sum(w / total * v[j, cols] for w, j in zip(weights, visible))
        out[b] = heads_out @ w_out.T + b_out
    return out


def _randomised(width: int, heads: int, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(width, heads)
    with torch.no_grad():
        # Non-zero biases so a bias in the wrong slot (q/k/v) would show up.
        attn.in_proj_bias.normal_(std=0.5)
        attn.out_proj.bias.normal_(std=0.5)
    return attn


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("width,heads", [(16, 1), (24, 3), (32, 4)])
def test_matches_naive_loop(width: int, heads: int, causal: bool) -> None:
    attn = _randomised(width, heads)
    x = torch.randn(2, 7, width)
    got = attn(x, causal=causal).detach().double().numpy()
    np.testing.assert_allclose(got, naive_attention(attn, x, causal), rtol=1e-4, atol=1e-5)


def test_key_mask_matches_naive_loop() -> None:
    attn = _randomised(24, 3)
    x = torch.randn(3, 6, 24)
    keep = [[True] * 6, [True, True, True, False, False, False], [True, False, True, True, False, True]]
    mask = torch.tensor(keep)[:, None, None, :]  # (B, 1, 1, T)
    got = attn(x, mask=mask).detach().double().numpy()
    np.testing.assert_allclose(got, naive_attention(attn, x, False, keep), rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, naive_attention(attn, x, False), atol=1e-3)


def test_causal_and_full_differ() -> None:
    # Guards the parametrised test above against a mask that is silently ignored.
    attn = _randomised(16, 2)
    x = torch.randn(1, 5, 16)
    assert not torch.allclose(attn(x, causal=True), attn(x, causal=False), atol=1e-4)


def test_causal_output_ignores_later_tokens() -> None:
    attn = _randomised(16, 2)
    x = torch.randn(1, 6, 16)
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 16)
    a, b = attn(x, causal=True), attn(changed, causal=True)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_state_dict_keys_equal_multihead_attention() -> None:
    ours = Attention(32, 4).state_dict()
    theirs = nn.MultiheadAttention(32, 4, batch_first=True).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert set(ours) == {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}


def _openclip_causal_mask(T: int) -> torch.Tensor:
    # How OpenCLIP / OpenAI CLIP build the text mask: additive, -inf above the diagonal.
    return torch.empty(T, T).fill_(float("-inf")).triu_(1)


@pytest.mark.parametrize("causal", [False, True])
def test_matches_multihead_attention_loaded_with_our_weights(causal: bool) -> None:
    attn = _randomised(32, 4)
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    mha.load_state_dict(attn.state_dict(), strict=True)
    mha.eval()
    x = torch.randn(3, 9, 32)
    mask = _openclip_causal_mask(9) if causal else None
    expected = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
    torch.testing.assert_close(attn(x, causal=causal), expected, rtol=1e-5, atol=1e-5)


def test_loads_weights_of_sequence_first_multihead_attention() -> None:
    # OpenAI CLIP runs nn.MultiheadAttention sequence-first (L, N, D); its weights must load here.
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(24, 3)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    mha.eval()
    attn = Attention(24, 3)
    attn.load_state_dict(mha.state_dict(), strict=True)
    x = torch.randn(2, 6, 24)
    xt = x.transpose(0, 1)
    expected = mha(xt, xt, xt, need_weights=False, attn_mask=_openclip_causal_mask(6))[0].transpose(0, 1)
    torch.testing.assert_close(attn(x, causal=True), expected, rtol=1e-5, atol=1e-5)


def test_width_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="width 30 .*heads 4"):
        Attention(30, 4)


def test_gradients_reach_all_parameters() -> None:
    attn = _randomised(16, 2)
    x = torch.randn(2, 4, 16, requires_grad=True)
    attn(x, causal=True).square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def _mha_with(attn: Attention, width: int, heads: int) -> nn.MultiheadAttention:
    mha = nn.MultiheadAttention(width, heads, batch_first=True)
    mha.load_state_dict(attn.state_dict())
    return mha


def test_padding_mask_matches_multihead_attention_key_padding_mask() -> None:
    torch.manual_seed(0)
    attn, x = Attention(16, 2), torch.randn(3, 5, 16)
    real = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    want, _ = _mha_with(attn, 16, 2)(x, x, x, key_padding_mask=~real, need_weights=False)
    torch.testing.assert_close(attn(x, mask=real[:, None, None, :]), want, atol=1e-5, rtol=1e-5)


def test_cross_with_probs_matches_multihead_attention_weights() -> None:
    torch.manual_seed(0)
    attn, q, kv = Attention(16, 4), torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    want, weights = _mha_with(attn, 16, 4)(q, kv, kv, need_weights=True, average_attn_weights=False)
    out, probs = attn.cross_with_probs(q, kv)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs, weights, atol=1e-6, rtol=1e-5)  # (B, heads, Q, T)
    torch.testing.assert_close(attn.cross(q, kv), want, atol=1e-5, rtol=1e-5)
