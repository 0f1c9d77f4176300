"""caption_loss against a naive per-token loop and against transformers' own causal-LM loss.

(Named test_caption_loss.py, not test_captioning.py: tests/ has no packages, so basenames must be
unique, and tests/eval/test_captioning.py is the caption scorers'.)"""

from __future__ import annotations

import math

import pytest
import torch

from coembed.losses.captioning import caption_loss

PAD = 0


def _batch(seed: int = 0, vocab: int = 11):
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 3, 7, 2]
    tokens = torch.full((4, 7), PAD)
    for i, n in enumerate(lengths):
        tokens[i, :n] = torch.randint(1, vocab, (n,), generator=g)
    return torch.randn(4, 7, vocab, generator=g, dtype=torch.float64), tokens


def _naive(logits: torch.Tensor, tokens: torch.Tensor, eps: float) -> float:
    """One token at a time: -[(1 - eps) log p(target) + eps * mean_v log p(v)], averaged over real targets."""
    total, count = 0.0, 0
    vocab = logits.shape[-1]
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1] - 1):
            target = int(tokens[b, t + 1])
            if target == PAD:
                continue
            z = [float(x) for x in logits[b, t]]
            lse = math.log(sum(math.exp(v) for v in z))
            logp = [v - lse for v in z]
            total += -((1 - eps) * logp[target] + eps * sum(logp) / vocab)
            count += 1
    return total / count


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_equals_a_per_token_loop(eps: float) -> None:
    logits, tokens = _batch()
    assert caption_loss(logits, tokens, PAD, label_smoothing=eps).item() == pytest.approx(_naive(logits, tokens, eps), rel=1e-10)


def test_equals_transformers_causal_lm_loss() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=11, n_positions=8, n_embd=16, n_layer=1, n_head=2)).eval()
    _, tokens = _batch(1)
    labels = tokens.masked_fill(tokens == PAD, -100)
    out = model(input_ids=tokens, labels=labels)
    assert caption_loss(out.logits, tokens, PAD).item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_padding_positions_do_not_count() -> None:
    logits, tokens = _batch()
    changed = logits.clone()
    changed[tokens == PAD] += 100 * torch.randn_like(changed[tokens == PAD])  # logits at padding inputs
    changed[:, -1] += 5.0  # the last position predicts nothing
    assert caption_loss(changed, tokens, PAD).item() == pytest.approx(caption_loss(logits, tokens, PAD).item(), rel=1e-12)


def test_bf16_logits_give_a_float32_loss() -> None:
    logits, tokens = _batch()
    assert caption_loss(logits.to(torch.bfloat16), tokens, PAD).dtype == torch.float32


@pytest.mark.parametrize(("logits", "tokens", "kw", "match"), [
    (torch.zeros(2, 3, 5), torch.ones(2, 4, dtype=torch.long), {}, "logits must be"),
    (torch.zeros(2, 1, 5), torch.ones(2, 1, dtype=torch.long), {}, "at least 2"),
    (torch.zeros(2, 3, 5), torch.ones(2, 3, dtype=torch.long), {"label_smoothing": 1.0}, "label_smoothing"),
    (torch.zeros(1, 3, 5), torch.tensor([[1, 0, 0]]), {}, "no token to predict"),
])
def test_bad_inputs_are_named(logits, tokens, kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        caption_loss(logits, tokens, PAD, **kw)
