"""Pre-LN residual blocks vs a hand-written float64 block; layout, init and checkpointing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coembed.layers.transformer import ResidualAttentionBlock, Transformer


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference_block(block: ResidualAttentionBlock, x: np.ndarray, causal: bool, quick: bool) -> np.ndarray:
    """x + attn(ln_1(x)); then + mlp(ln_2(x)), written from the CLIP paper's description."""
    sd = {k: _np(v) for k, v in block.state_dict().items()}
    B, T, C = x.shape
    heads = block.attn.heads
    hd = C // heads
    h = _layer_norm(x, sd["ln_1.weight"], sd["ln_1.bias"])
    qkv = h @ sd["attn.in_proj_weight"].T + sd["attn.in_proj_bias"]
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    mask = np.triu(np.full((T, T), -np.inf), 1) if causal else np.zeros((T, T))
    y = np.zeros_like(h)
    for i in range(heads):
        c = slice(i * hd, (i + 1) * hd)
        scores = q[..., c] @ k[..., c].transpose(0, 2, 1) / math.sqrt(hd) + mask
        y[..., c] = _softmax(scores) @ v[..., c]
    x = x + y @ sd["attn.out_proj.weight"].T + sd["attn.out_proj.bias"]
    h = _layer_norm(x, sd["ln_2.weight"], sd["ln_2.bias"]) @ sd["mlp.c_fc.weight"].T + sd["mlp.c_fc.bias"]
    if quick:
        h = h / (1 + np.exp(-1.702 * h))
    else:
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    return x + h @ sd["mlp.c_proj.weight"].T + sd["mlp.c_proj.bias"]


def _perturb(module: torch.nn.Module) -> None:
    # Default LayerNorm (1, 0) and zero biases would hide swapped or missing terms.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("quick", [False, True])
def test_block_matches_reference(causal: bool, quick: bool) -> None:
    torch.manual_seed(0)
    block = ResidualAttentionBlock(16, 2, 4.0, quick_gelu=quick)
    _perturb(block)
    x = torch.randn(2, 6, 16)
    got = _np(block(x, causal=causal))
    np.testing.assert_allclose(got, reference_block(block, _np(x), causal, quick), rtol=1e-4, atol=1e-5)


def test_mlp_ratio_sets_hidden_width() -> None:
    block = ResidualAttentionBlock(16, 2, 2.5)
    assert block.mlp.c_fc.weight.shape == (40, 16)


@pytest.mark.parametrize("causal", [False, True])
def test_stack_applies_blocks_in_order(causal: bool) -> None:
    torch.manual_seed(1)
    model = Transformer(16, 3, 4)
    _perturb(model)
    x = torch.randn(2, 5, 16)
    expected = _np(x)
    for block in model.resblocks:
        expected = reference_block(block, expected, causal, quick=False)
    np.testing.assert_allclose(_np(model(x, causal=causal)), expected, rtol=1e-4, atol=1e-4)


def test_state_dict_follows_openclip_names() -> None:
    width, hidden = 8, 32
    per_block = {
        "ln_1.weight": (width,),
        "ln_1.bias": (width,),
        "attn.in_proj_weight": (3 * width, width),
        "attn.in_proj_bias": (3 * width,),
        "attn.out_proj.weight": (width, width),
        "attn.out_proj.bias": (width,),
        "ln_2.weight": (width,),
        "ln_2.bias": (width,),
        "mlp.c_fc.weight": (hidden, width),
        "mlp.c_fc.bias": (hidden,),
        "mlp.c_proj.weight": (width, hidden),
        "mlp.c_proj.bias": (width,),
    }
    expected = {f"resblocks.{i}.{k}": s for i in range(2) for k, s in per_block.items()}
    got = {k: tuple(v.shape) for k, v in Transformer(width, 2, 2).state_dict().items()}
    assert got == expected


def test_grad_checkpointing_gives_same_output_and_gradients() -> None:
    torch.manual_seed(2)
    plain = Transformer(16, 2, 2)
    ckpt = Transformer(16, 2, 2)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.grad_checkpointing = True
    x = torch.randn(2, 5, 16)
    outs = []
    for model in (plain, ckpt):
        model.train()
        y = model(x, causal=True)
        y.square().sum().backward()
        outs.append(y.detach())
    torch.testing.assert_close(outs[0], outs[1])
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_init_weights_uses_clip_standard_deviations() -> None:
    torch.manual_seed(3)
    width, layers = 128, 4
    model = Transformer(width, layers, 4)
    model.init_weights()
    # OpenCLIP CLIP.init_parameters: attn width^-0.5, proj width^-0.5 * (2 layers)^-0.5, fc (2 width)^-0.5.
    expected = {
        "attn.in_proj_weight": width**-0.5,
        "attn.out_proj.weight": width**-0.5 * (2 * layers) ** -0.5,
        "mlp.c_fc.weight": (2 * width) ** -0.5,
        "mlp.c_proj.weight": width**-0.5 * (2 * layers) ** -0.5,
    }
    params = dict(model.named_parameters())
    for name, std in expected.items():
        values = torch.cat([params[f"resblocks.{i}.{name}"].detach().flatten() for i in range(layers)])
        assert abs(values.std().item() / std - 1) < 0.05, name
        assert abs(values.mean().item()) < 0.05 * std, name


def test_zero_layers_is_identity() -> None:
    x = torch.randn(1, 3, 8)
    torch.testing.assert_close(Transformer(8, 0, 2)(x), x)
