"""The BLIP captioner: its decoder against a naive per-position reference written from the parameters,
tied LM head, causal logits, padding invariance, BLIP's label-smoothed loss, and a tiny model that
overfits a few captions and then greedy-decodes them exactly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from coembed.generation import caption, generate
from coembed.models.blip_captioner import BlipCaptioner, BlipCaptionerConfig, BlipTextConfig
from coembed.objectives import FusionBatch
from coembed.objectives.blip import compute_losses
from coembed.towers.vit import VisionConfig

VOCAB, CONTEXT = 40, 10


def _config(**kw) -> BlipCaptionerConfig:
    text = {"vocab_size": VOCAB, "context_length": CONTEXT, "width": 32, "heads": 2, "layers": 2, **kw.pop("text", {})}
    vision = VisionConfig(image_size=32, patch_size=8, width=48, layers=1, heads=2)
    return BlipCaptionerConfig(vision=vision, text=BlipTextConfig(**text), **kw)


def _tokens() -> torch.Tensor:
    return torch.tensor([[1, 5, 6, 7, 2, 0], [1, 9, 2, 0, 0, 0], [1, 11, 12, 13, 14, 2]])


def _ln(x, mod):
    return F.layer_norm(x, x.shape[-1:], mod.weight, mod.bias, mod.eps)


def _naive_attention(attn, q_in: torch.Tensor, kv_in: torch.Tensor, causal: bool) -> torch.Tensor:
    """One query position at a time: softmax(q k^T / sqrt(d)) v over the visible keys, head by head."""
    width = q_in.shape[-1]
    wq, wk, wv = attn.in_proj_weight.split(width)
    bq, bk, bv = attn.in_proj_bias.split(width)
    d = width // attn.heads
    out = torch.zeros_like(q_in)
    for t in range(q_in.shape[0]):
        keys = kv_in[: t + 1] if causal else kv_in
        heads = []
        for h in range(attn.heads):
            s = slice(h * d, (h + 1) * d)
            q = q_in[t] @ wq[s].T + bq[s]
            k, v = keys @ wk[s].T + bk[s], keys @ wv[s].T + bv[s]
            heads.append(torch.softmax(k @ q / math.sqrt(d), dim=0) @ v)
        out[t] = torch.cat(heads) @ attn.out_proj.weight.T + attn.out_proj.bias
    return out


def _naive_logits(model: BlipCaptioner, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """One caption (T,) and its image (3, H, W) -> (T, vocab), without the model's batched code paths."""
    dec = model.text_decoder
    memory = model.image_to_text(model.visual.forward_features(image[None]))[0]
    x = dec.token_embedding.weight[tokens] + dec.positional_embedding[: len(tokens)]
    for b in dec.blocks:
        x = x + _naive_attention(b.attn, _ln(x, b.ln_1), _ln(x, b.ln_1), causal=True)
        x = x + _naive_attention(b.cross_attn, _ln(x, b.ln_cross), memory, causal=False)
        h = _ln(x, b.ln_2)
        x = x + F.gelu(h @ b.mlp.c_fc.weight.T + b.mlp.c_fc.bias) @ b.mlp.c_proj.weight.T + b.mlp.c_proj.bias
    head = dec.lm_head
    h = _ln(F.gelu(_ln(x, dec.ln_final) @ head.dense.weight.T + head.dense.bias), head.ln)
    return h @ dec.token_embedding.weight.T + head.bias  # tied: the word embeddings project back


def test_decoder_equals_a_naive_per_position_reference() -> None:
    torch.manual_seed(0)
    model = BlipCaptioner(_config()).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped LayerNorm or bias would show
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    images, tokens = torch.randn(3, 3, 32, 32), _tokens()
    with torch.no_grad():
        got = model(images, tokens)
        for i in range(3):
            torch.testing.assert_close(got[i], _naive_logits(model, images[i], tokens[i]), atol=1e-4, rtol=1e-4)


def test_the_lm_head_is_tied_to_the_word_embeddings_unless_told_otherwise() -> None:
    tied = BlipCaptioner(_config())
    assert tied.text_decoder.lm_weight is None and "text_decoder.lm_weight" not in tied.state_dict()
    untied = BlipCaptioner(_config(text={"tie_embeddings": False}))
    assert untied.text_decoder.lm_weight.shape == (VOCAB, 32)


def test_logits_at_t_ignore_later_tokens() -> None:
    torch.manual_seed(1)
    model = BlipCaptioner(_config()).eval()
    images, tokens = torch.randn(3, 3, 32, 32), _tokens()
    changed = tokens.clone()
    changed[:, 3:] = torch.randint(5, VOCAB, (3, 3))
    with torch.no_grad():
        a, b = model(images, tokens), model(images, changed)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_padding_does_not_change_the_logits_of_real_tokens() -> None:
    torch.manual_seed(2)
    model = BlipCaptioner(_config()).eval()
    images, tokens = torch.randn(3, 3, 32, 32), _tokens()
    padded = F.pad(tokens, (0, 4))
    with torch.no_grad():
        torch.testing.assert_close(model(images, padded)[:, :6], model(images, tokens))


def test_objective_is_the_label_smoothed_next_token_loss() -> None:
    torch.manual_seed(3)
    model = BlipCaptioner(_config())
    images, tokens = torch.randn(3, 3, 32, 32), F.pad(_tokens(), (0, 3))  # trailing padding is trimmed
    terms = compute_losses(model, FusionBatch(images, tokens, torch.arange(3)), progress=0.0, weights={}, generator=torch.Generator())
    with torch.no_grad():
        logits = model(images, tokens)[:, :-1]
    targets = tokens[:, 1:].masked_fill(tokens[:, 1:] == 0, -100)
    want = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), ignore_index=-100, label_smoothing=0.1)
    assert set(terms) == {"caption"} and terms["caption"].item() == pytest.approx(want.item(), rel=1e-5)


def test_a_tiny_blip_overfits_four_captions_and_decodes_them() -> None:
    torch.manual_seed(4)
    model = BlipCaptioner(_config(label_smoothing=0.0))
    images = torch.randn(4, 3, 32, 32)
    tokens = torch.zeros(4, CONTEXT, dtype=torch.long)
    for i, words in enumerate([[5, 6, 7], [8, 9], [10, 11, 12, 13], [5, 14]]):
        tokens[i, : len(words) + 2] = torch.tensor([1, *words, 2])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(100):
        loss = compute_losses(model, FusionBatch(images, tokens, torch.arange(4)), progress=0.0, weights={},
                              generator=torch.Generator())["caption"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    for method in ("greedy", "beam"):
        out = generate(model, images, method, num_beams=2)
        assert torch.equal(out, tokens[:, : out.shape[1]]), method

    class Words:  # a stand-in tokenizer: id -> word
        def decode(self, ids):
            return " ".join(f"w{i}" for i in ids if i > 4)

    assert caption(model, images, Words())[3] == "w5 w14"


@pytest.mark.parametrize(("kw", "match"), [({"label_smoothing": 1.0}, "label_smoothing"),
                                           ({"text": {"heads": 3}}, "text.width"), ({"text": {"sot_id": 99}}, "text.sot_id")])
def test_bad_config_names_the_field(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _config(**kw)
