"""Decoding against the peer implementation: Hugging Face ``generate()`` on a random-weight GPT-2 must
give the same tokens as coembed's greedy and beam search driven by the same model's logits, and the
nucleus filter must equal transformers' ``TopPLogitsWarper`` / ``TopKLogitsWarper``."""

from __future__ import annotations

import pytest
import torch

from coembed.generation.decoding import beam_search, greedy_search, nucleus_sampling, sampling_logits, top_k_filter, top_p_filter

transformers = pytest.importorskip("transformers")

VOCAB, EOS, PAD = 24, 7, 5  # 7 is a frequent token of this random model: beams end early, at various steps


@pytest.fixture(scope="module")
def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=1,
                                  eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # sharper logits than the 0.02-std init: clear winners, few near-ties
        model.lm_head.weight.mul_(5)
    return model


def _logits_fn(model):
    return lambda tokens: model(input_ids=tokens).logits


def _prompts(batch: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(8, VOCAB, (batch, length), generator=g)  # no end or pad id inside a prompt


def _hf(model, prompt: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), eos_token_id=EOS, pad_token_id=PAD,
                              do_sample=False, **kw)


@pytest.mark.parametrize(("batch", "length", "seed"), [(1, 1, 0), (4, 1, 1), (3, 3, 2), (5, 2, 3)])
def test_greedy_equals_transformers(gpt2, batch: int, length: int, seed: int) -> None:
    prompt = _prompts(batch, length, seed)
    want = _hf(gpt2, prompt, max_length=16, num_beams=1)
    got = greedy_search(_logits_fn(gpt2), prompt, max_length=16, eos_id=EOS, pad_id=PAD)
    assert torch.equal(got, want)


@pytest.mark.parametrize(("num_beams", "length_penalty", "early_stopping"),
                         [(2, 1.0, False), (3, 1.0, False), (4, 0.6, False), (3, 2.0, False), (3, 1.0, True),
                          (3, 1.5, "never"), (1, 1.0, False)])
@pytest.mark.parametrize("seed", [0, 1])
def test_beam_search_equals_transformers(gpt2, num_beams: int, length_penalty: float, early_stopping, seed: int) -> None:
    prompt = _prompts(6, 2, 12 + seed)
    want = _hf(gpt2, prompt, max_length=14, num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping)
    got = beam_search(_logits_fn(gpt2), prompt, num_beams=num_beams, max_length=14, eos_id=EOS, pad_id=PAD,
                      length_penalty=length_penalty, early_stopping=early_stopping)
    assert torch.equal(got, want)


def test_the_compared_beams_end_at_different_lengths(gpt2) -> None:
    # the comparison above is only telling if beams finish early (eos) and at various lengths
    prompt = _prompts(6, 2, 12)
    got = beam_search(_logits_fn(gpt2), prompt, num_beams=3, max_length=14, eos_id=EOS, pad_id=PAD)
    ends = [(row == EOS).nonzero()[0].item() if (row == EOS).any() else None for row in got]
    assert len({e for e in ends if e is not None}) >= 3  # ended at three different steps


def test_beam_search_finds_a_better_sequence_than_greedy(gpt2) -> None:
    # the log-probability of beam search's answer is at least greedy's when both end (length penalty 0)
    prompt = _prompts(8, 1, 4)
    fn = _logits_fn(gpt2)

    def score(seq: torch.Tensor) -> float:
        end = (seq == EOS).nonzero()[0].item() + 1 if (seq == EOS).any() else len(seq)
        logp = torch.log_softmax(fn(seq[None, : end - 1]), -1)[0]
        return sum(logp[t - 1, seq[t]].item() for t in range(1, end))

    greedy = greedy_search(fn, prompt, max_length=12, eos_id=EOS, pad_id=PAD)
    beams = beam_search(fn, prompt, num_beams=4, max_length=12, eos_id=EOS, pad_id=PAD, length_penalty=0.0)
    assert all(score(b) >= score(g) - 1e-5 for b, g in zip(beams, greedy))
    assert any(score(b) > score(g) + 1e-4 for b, g in zip(beams, greedy))


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99, 1.0])
def test_top_p_filter_equals_transformers_warper(top_p: float) -> None:
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(1)) * 3
    want = transformers.TopPLogitsWarper(top_p=top_p)(None, logits.clone())
    assert torch.equal(top_p_filter(logits, top_p), want)


@pytest.mark.parametrize("top_k", [1, 5, 49])
def test_top_k_filter_equals_transformers_warper(top_k: int) -> None:
    logits = torch.randn(16, 50, generator=torch.Generator().manual_seed(2))
    want = transformers.TopKLogitsWarper(top_k=top_k)(None, logits.clone())
    assert torch.equal(top_k_filter(logits, top_k), want)


def test_sampling_logits_apply_temperature_then_top_k_then_top_p_as_transformers() -> None:
    logits = torch.randn(8, 40, generator=torch.Generator().manual_seed(3)) * 2
    warpers = transformers.LogitsProcessorList([transformers.TemperatureLogitsWarper(0.7), transformers.TopKLogitsWarper(10),
                                                transformers.TopPLogitsWarper(0.8)])
    assert torch.equal(sampling_logits(logits, temperature=0.7, top_k=10, top_p=0.8), warpers(None, logits.clone()))


def test_nucleus_sampling_is_seeded_and_draws_only_from_the_nucleus(gpt2) -> None:
    prompt = _prompts(6, 1, 5)
    fn = _logits_fn(gpt2)

    def draw(seed: int) -> torch.Tensor:
        return nucleus_sampling(fn, prompt, max_length=12, eos_id=EOS, pad_id=PAD, top_p=0.6,
                                generator=torch.Generator().manual_seed(seed))

    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for row in a:  # every drawn token lies in the top-p set of its prefix's logits
        for t in range(1, len(row)):
            if row[t - 1] in (EOS, PAD):
                break
            allowed = torch.isfinite(top_p_filter(fn(row[None, :t])[0, -1], 0.6))
            assert allowed[row[t]]


def test_nucleus_with_tiny_top_p_is_greedy(gpt2) -> None:
    prompt = _prompts(4, 2, 6)
    fn = _logits_fn(gpt2)
    sampled = nucleus_sampling(fn, prompt, max_length=12, eos_id=EOS, pad_id=PAD, top_p=1e-6, generator=torch.Generator())
    assert torch.equal(sampled, greedy_search(fn, prompt, max_length=12, eos_id=EOS, pad_id=PAD))


@pytest.mark.parametrize(("kwargs", "match"), [({"max_length": 2}, "max_length"), ({"top_p": 0.0}, "top_p"),
                                               ({"temperature": 0.0}, "temperature"), ({"top_k": -1}, "top_k")])
def test_bad_settings_name_the_argument(gpt2, kwargs: dict, match: str) -> None:
    args = {"max_length": 8, "eos_id": EOS, "pad_id": PAD, **kwargs}
    with pytest.raises(ValueError, match=match):
        nucleus_sampling(_logits_fn(gpt2), _prompts(1, 2, 0), **args)
