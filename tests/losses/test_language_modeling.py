"""next_token_loss against a naive per-token loop."""

from __future__ import annotations

import math

import pytest
import torch

from coembed.losses.language_modeling import next_token_loss


def naive(logits: torch.Tensor, tokens: torch.Tensor, pad: int) -> float:
    total, count = 0.0, 0
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1] - 1):
            target = int(tokens[b, t + 1])
            if target == pad:
                continue
            row = logits[b, t].double()
            total += -(row[target] - torch.logsumexp(row, 0)).item()
            count += 1
    return total / count


def test_equals_a_naive_loop_and_ignores_padding() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g)
    tokens = torch.randint(1, 11, (3, 7), generator=g)
    tokens[1, 4:] = 0
    assert next_token_loss(logits, tokens, 0).item() == pytest.approx(naive(logits, tokens, 0), rel=1e-6)
    changed = logits.clone()
    changed[1, 4:] = 1e3  # logits of positions whose targets are padding (and the last position)
    changed[:, -1] = -1e3
    assert next_token_loss(changed, tokens, 0).item() == pytest.approx(naive(logits, tokens, 0), rel=1e-6)


def test_uniform_logits_give_log_vocab() -> None:
    tokens = torch.tensor([[1, 5, 6, 2]])
    assert next_token_loss(torch.zeros(1, 4, 9), tokens, 0).item() == pytest.approx(math.log(9))


@pytest.mark.parametrize(("logits", "tokens", "match"), [
    (torch.zeros(2, 4, 5), torch.ones(2, 3, dtype=torch.long), "logits must be"),
    (torch.zeros(2, 1, 5), torch.ones(2, 1, dtype=torch.long), "at least 2 positions"),
    (torch.zeros(1, 3, 5), torch.tensor([[1, 0, 0]]), "every target is padding"),
])
def test_bad_inputs_are_named(logits, tokens, match) -> None:
    with pytest.raises(ValueError, match=match):
        next_token_loss(logits, tokens, 0)
