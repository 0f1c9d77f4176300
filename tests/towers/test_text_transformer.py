"""Causal text tower: padding trimming, end-of-text pooling, validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from coembed.towers.text_transformer import TextConfig, TextTransformer, trim_padding

CONTEXT = 12


def _tower(**kw) -> TextTransformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, context_length=CONTEXT, width=16, layers=2, heads=2)
    cfg.update(kw)
    tower = TextTransformer(TextConfig(**cfg), output_dim=8)
    with torch.no_grad():
        tower.ln_final.weight.normal_()
        tower.ln_final.bias.normal_()
    return tower


def _rows(lengths: list[int], eot: int = 2, width: int = CONTEXT, low: int = 5, high: int = 49) -> torch.Tensor:
    """``<sot> words... <eot> <pad>...`` rows; each length counts sot and eot."""
    g = torch.Generator().manual_seed(sum(lengths))
    out = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        out[i, 0] = 1
        out[i, 1 : n - 1] = torch.randint(low, high, (n - 2,), generator=g)
        out[i, n - 1] = eot
    return out


def untrimmed_reference(tower: TextTransformer, tokens: torch.Tensor, pool_at: torch.Tensor) -> torch.Tensor:
    """Embed the full padded rows, run every position with a causal mask, gather at ``pool_at``."""
    T = tokens.shape[1]
    x = tower.token_embedding.weight[tokens] + tower.positional_embedding[:T]
    x = tower.transformer(x, causal=True)  # the block stack is tested against a reference in tests/layers
    x = F.layer_norm(x, (x.shape[-1],), tower.ln_final.weight, tower.ln_final.bias)
    return x[torch.arange(len(tokens)), pool_at] @ tower.text_projection


def test_trim_padding() -> None:
    tokens = torch.tensor([[1, 7, 2, 0, 0, 0], [1, 2, 0, 0, 0, 0], [1, 0, 8, 2, 0, 0]])
    assert trim_padding(tokens, 0).tolist() == [r[:4] for r in tokens.tolist()]
    assert trim_padding(torch.zeros(2, 5, dtype=torch.long), 0).shape == (2, 1)
    assert trim_padding(tokens, 9).shape == (3, 6)  # nothing equals the pad id: keep all


def test_trimmed_equals_untrimmed_for_mixed_lengths() -> None:
    tower = _tower()
    lengths = [3, 7, 12, 5]
    tokens = _rows(lengths)
    expected = untrimmed_reference(tower, tokens, torch.tensor(lengths) - 1)
    torch.testing.assert_close(tower(tokens), expected, rtol=1e-5, atol=1e-5)
    # Trimming actually happened for a batch of short rows (otherwise the test proves little).
    short = _rows([3, 4])
    assert tower.text_features(short).shape[1] == 4
    torch.testing.assert_close(tower(short), untrimmed_reference(tower, short, torch.tensor([2, 3])), rtol=1e-5, atol=1e-5)


def test_row_embedding_does_not_depend_on_the_batch() -> None:
    tower = _tower()
    tokens = _rows([3, 9, 6])
    batched = tower(tokens)
    for i in range(3):
        torch.testing.assert_close(tower(tokens[i : i + 1]), batched[i : i + 1], rtol=1e-5, atol=1e-5)


def test_tokens_after_eot_are_ignored() -> None:
    # Causal mask + eot pooling: whatever follows the eot cannot change the embedding.
    tower = _tower()
    tokens = _rows([4, 6])
    noisy = tokens.clone()
    noisy[0, 4:] = torch.randint(5, 49, (CONTEXT - 4,))
    torch.testing.assert_close(tower(noisy)[0], tower(tokens)[0], rtol=1e-5, atol=1e-5)


def test_eot_and_argmax_pooling_agree_when_eot_is_the_largest_id() -> None:
    eot_pool = _tower(eot_id=49, pool_type="eot")
    argmax_pool = _tower(eot_id=49, pool_type="argmax")
    argmax_pool.load_state_dict(eot_pool.state_dict())
    tokens = _rows([3, 8, 12, 6], eot=49)
    torch.testing.assert_close(argmax_pool(tokens), eot_pool(tokens))
    torch.testing.assert_close(eot_pool(tokens), untrimmed_reference(eot_pool, tokens, torch.tensor([2, 7, 11, 5])))


def test_eot_pooling_uses_the_first_eot() -> None:
    tower = _tower()
    tokens = torch.tensor([[1, 9, 2, 7, 2, 0], [1, 9, 9, 9, 9, 2]])
    assert tower.pool_index(tokens).tolist() == [2, 5]


def test_argmax_pooling_picks_largest_id() -> None:
    tower = _tower(pool_type="argmax")
    tokens = torch.tensor([[1, 30, 2, 0], [1, 2, 5, 0]])
    assert tower.pool_index(tokens).tolist() == [1, 2]


def test_row_without_eot_pools_its_last_token() -> None:
    tower = _tower()
    tokens = torch.tensor(
        [
            [1, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19],  # truncated by a foreign tokenizer: no eot
            [1, 9, 10, 2, 0, 0, 0, 0, 0, 0, 0, 0],
            [1, 20, 21, 22, 0, 0, 0, 0, 0, 0, 0, 0],  # no eot, padded: last non-pad token is index 3
        ]
    )
    assert tower.pool_index(tokens).tolist() == [11, 3, 3]
    expected = untrimmed_reference(tower, tokens, torch.tensor([11, 3, 3]))
    torch.testing.assert_close(tower(tokens), expected, rtol=1e-5, atol=1e-5)
    # The padded row without eot gets the same embedding alone (trimmed to 4 columns) as in the batch.
    torch.testing.assert_close(tower(tokens[2:]), expected[2:], rtol=1e-5, atol=1e-5)


def test_too_long_tokens_raise() -> None:
    tower = _tower()
    tokens = torch.randint(5, 49, (2, CONTEXT + 1))
    with pytest.raises(ValueError, match=f"length {CONTEXT + 1} > context_length {CONTEXT}"):
        tower(tokens)


def test_trailing_padding_beyond_context_length_is_accepted() -> None:
    # A tokenizer that pads to a longer fixed length is fine as long as the text fits.
    tower = _tower()
    tokens = _rows([4, 6], width=CONTEXT + 20)
    torch.testing.assert_close(tower(tokens), tower(tokens[:, :CONTEXT]))


def test_tokens_must_be_two_dimensional() -> None:
    with pytest.raises(ValueError, match="batch, length"):
        _tower()(torch.tensor([1, 5, 2]))


def test_state_dict_uses_openai_names() -> None:
    keys = set(_tower(layers=1).state_dict())
    top = {k for k in keys if not k.startswith("transformer.resblocks.0.")}
    assert top == {"token_embedding.weight", "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection"}


def test_init_standard_deviations() -> None:
    torch.manual_seed(0)
    tower = TextTransformer(TextConfig(vocab_size=4000, context_length=64, width=128, layers=1, heads=2), 128)
    assert abs(tower.token_embedding.weight.std().item() / 0.02 - 1) < 0.05
    assert abs(tower.positional_embedding.std().item() / 0.01 - 1) < 0.05
    assert abs(tower.text_projection.std().item() / 128**-0.5 - 1) < 0.05


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"pool_type": "mean"}, "pool_type"),
        ({"width": 30, "heads": 4}, r"text.width \(30\).*text.heads \(4\)"),
        ({"context_length": 0}, "text.context_length must be a positive int, got 0"),
        ({"vocab_size": -1}, "text.vocab_size"),
        ({"mlp_ratio": -2.0}, "text.mlp_ratio"),
    ],
)
def test_config_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TextConfig(**kw)
