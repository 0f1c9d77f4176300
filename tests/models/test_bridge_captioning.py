"""Every bridge (and the LM) drives a decoder through ``caption_memory`` / ``caption_logits`` alone:
a naive greedy loop (the memory computed once) agrees with the teacher-forced logits of its output."""

from __future__ import annotations

import pytest
import torch

from coembed.models.causal_lm import CausalLM, CausalLMConfig, LMConfig
from coembed.models.flamingo import Flamingo, FlamingoConfig
from coembed.models.llava import Llava, LlavaConfig
from coembed.models.qformer import QFormer, QFormerConfig
from tests.models.bridge_helpers import TINY_LM, TINY_VISION, images

BRIDGE = {"vision": TINY_VISION, "context_length": 12}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    lm = LMConfig(**TINY_LM)
    models = {
        "lm": lambda: CausalLM(CausalLMConfig(**TINY_LM)),
        "llava": lambda: Llava(LlavaConfig(lm=lm, **BRIDGE)),
        "flamingo": lambda: Flamingo(FlamingoConfig(lm=lm, num_latents=4, resampler_layers=1, **BRIDGE)),
        "qformer-1": lambda: QFormer(QFormerConfig(lm=lm, num_queries=3, width=32, layers=2, vocab_size=64, **BRIDGE)),
        "qformer-2": lambda: QFormer(QFormerConfig(lm=lm, num_queries=3, width=32, layers=2, vocab_size=64, stage=2, **BRIDGE)),
    }
    model = models[name]().eval()
    if name == "flamingo":
        with torch.no_grad():  # open the gates, so the image matters
            for block in model.gated_cross_attn:
                block.attn_gate.fill_(1.0)
    return model


def greedy(model: torch.nn.Module, pics: torch.Tensor, steps: int) -> torch.Tensor:
    memory = model.caption_memory(pics)
    tokens = torch.ones(pics.shape[0], 1, dtype=torch.long)  # <sot>
    for _ in range(steps):
        nxt = model.caption_logits(memory, tokens)[:, -1].argmax(-1)  # (B,)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    return tokens


@pytest.mark.parametrize("name", ["lm", "llava", "flamingo", "qformer-1", "qformer-2"])
def test_greedy_loop_over_the_captioning_interface(name: str) -> None:
    model = build(name)
    pics = images(2)
    with torch.no_grad():
        tokens = greedy(model, pics, 6)
        full = model.caption_logits(model.caption_memory(pics), tokens)  # (B, 7, vocab)
    assert full.shape == (2, 7, 64)
    assert torch.equal(full[:, :-1].argmax(-1), tokens[:, 1:])  # incremental == teacher-forced
    if name != "lm":  # the image conditions the caption
        with torch.no_grad():
            other = model.caption_logits(model.caption_memory(images(2, seed=7)), tokens)
        assert not torch.allclose(other, full)
