"""Flamingo: exactly the LM at initialisation (coembed LM and a Hugging Face GPT-2), the resampler and
the gates against naive computations, what trains, training and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coembed.models.causal_lm import LMConfig, forward_with_prefix
from coembed.models.flamingo import Flamingo, FlamingoConfig, GatedCrossAttentionBlock, PerceiverResampler
from tests.models.bridge_helpers import (
    TINY_LM, TINY_VISION, TRAIN_LM, TRAIN_VISION, check_trains_and_resumes_exactly, gpt2_folder, images, tokens_with_padding,
)


def flamingo(lm: LMConfig | None = None, **overrides) -> Flamingo:
    torch.manual_seed(0)
    cfg = FlamingoConfig(vision=dict(TINY_VISION), lm=lm or LMConfig(**TINY_LM), num_latents=4, resampler_layers=1,
                         context_length=16, **overrides)
    return Flamingo(cfg).eval()


def test_at_init_the_logits_are_exactly_the_plain_lm() -> None:
    model = flamingo()
    tokens = tokens_with_padding()
    with torch.no_grad():
        memory = model.caption_memory(images())
        plain = forward_with_prefix(model.lm, memory[:, :0], tokens, 0)
        assert torch.equal(model.caption_logits(memory, tokens), plain)
        for block in model.gated_cross_attn:  # open the gates: the image now changes the logits
            block.attn_gate.fill_(0.5)
        assert not torch.allclose(model.caption_logits(memory, tokens), plain)


def test_at_init_the_logits_are_exactly_a_hugging_face_gpt2(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = gpt2_folder(tmp_path, layers=2)
    model = flamingo(LMConfig(path=str(folder)), cross_every=1)
    model.load_pretrained()
    model.train()  # the frozen LM stays without dropout
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokens = tokens_with_padding()
    with torch.no_grad():
        logits = model(images(), tokens)
        assert torch.equal(logits, ref(tokens, attention_mask=(tokens != 0).long()).logits)


def test_gated_blocks_sit_before_every_kth_lm_block() -> None:
    model = flamingo(lm=LMConfig(**{**TINY_LM, "layers": 4}), cross_every=2)
    assert len(model.gated_cross_attn) == 2
    seen = []
    for j, block in enumerate(model.gated_cross_attn):
        block.register_forward_pre_hook(lambda m, a, j=j: seen.append(j))
    calls = []
    model.lm.forward_embeds = lambda e, m, before_block: [calls.append(i) or before_block(i, e) for i in range(4)][-1]
    model.caption_logits(torch.zeros(3, 4, 32), tokens_with_padding())
    assert calls == [0, 1, 2, 3] and seen == [0, 1]  # before LM blocks 1 and 3, as open_flamingo's (i + 1) % k == 0


def test_resampler_equals_a_naive_perceiver_computation() -> None:
    torch.manual_seed(0)
    resampler = PerceiverResampler(8, layers=1, heads=2, num_latents=3, mlp_ratio=2.0).eval()
    media = torch.randn(2, 5, 8)
    attn_layer, ff = resampler.layers[0]
    x = resampler.latents.expand(2, -1, -1)
    lat = attn_layer.norm_latents(x)
    kv_in = torch.cat([attn_layer.norm_media(media), lat], dim=1)  # keys/values from media AND latents
    w_q, w_k, w_v = attn_layer.attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn_layer.attn.in_proj_bias.chunk(3)
    out = []
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        q, k, v = lat @ w_q[s].T + b_q[s], kv_in @ w_k[s].T + b_k[s], kv_in @ w_v[s].T + b_v[s]
        out.append(torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v)
    x = attn_layer.attn.out_proj(torch.cat(out, dim=-1)) + x
    x = ff.mlp(ff.ln(x)) + x
    with torch.no_grad():
        assert torch.allclose(resampler(media), resampler.norm(x), atol=1e-5)


def test_gate_is_tanh_of_its_parameter() -> None:
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(8, 2, 2.0)
    x, media = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    with torch.no_grad():
        block.attn_gate.fill_(0.3)
        block.ff_gate.fill_(-0.7)
        y = x + torch.tanh(torch.tensor(0.3)) * block.attn.cross(block.ln(x), media)
        assert torch.allclose(block(x, media), y + torch.tanh(torch.tensor(-0.7)) * block.ff(y), atol=1e-6)


def test_only_resampler_projection_and_gated_blocks_train() -> None:
    model = flamingo()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"perceiver", "media_proj", "gated_cross_attn"}
    model.train()
    loss = model(images(), tokens_with_padding()).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith(("visual.", "lm.")))
    assert model.gated_cross_attn[0].attn_gate.grad is not None  # the gates learn from 0


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="num_latents must be a positive int"):
        FlamingoConfig(vision=dict(TINY_VISION), lm=LMConfig(**TINY_LM), num_latents=0)
    with pytest.raises(ValueError, match="cross_every .5. is larger than the LM's 2 blocks"):
        flamingo(cross_every=5)


def test_flamingo_tiny_trains_and_resumes_exactly(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    model = {**TRAIN_VISION, **TRAIN_LM, "num_latents": 4, "resampler_layers": 1}
    val = check_trains_and_resumes_exactly(shapes_data, tmp_path, monkeypatch, "flamingo-tiny", model)
    assert 0 < val["val_caption_loss"] < 10
