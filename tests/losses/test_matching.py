"""Fusion-encoder objectives against naive loop implementations: values, gradients and sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from coembed.losses.contrastive import clip_loss
from coembed.losses.matching import (
    IGNORE_INDEX,
    itc_distill_loss,
    itm_loss,
    mask_tokens,
    mlm_loss,
    sample_itm_negatives,
)


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _naive_itc(img, txt, img_m, txt_m, img_q, txt_q, scale, alpha, ids=None, qids=None):
    """Row by row, candidate by candidate, with Python floats where it matters."""
    b = img.shape[0]
    text_all = torch.cat([txt_m, txt_q])
    image_all = torch.cat([img_m, img_q])
    ids_all = None if ids is None else torch.cat([ids, qids])

    def direction(queries, queries_m, cands):
        total = 0.0
        for i in range(b):
            logits = torch.stack([scale * (queries[i] * c).sum() for c in cands])
            soft = [math.exp(scale * float((queries_m[i] * c).sum())) for c in cands]
            soft = [s / sum(soft) for s in soft]
            if ids is None:
                hard = [1.0 if j == i else 0.0 for j in range(len(cands))]
            else:
                pos = [1.0 if int(ids_all[j]) == int(ids[i]) else 0.0 for j in range(len(cands))]
                hard = [p / sum(pos) for p in pos]
            log_p = logits - torch.logsumexp(logits, dim=0)
            total = total - sum((alpha * s + (1 - alpha) * h) * log_p[j] for j, (s, h) in enumerate(zip(soft, hard)))
        return total / b

    return (direction(img, img_m, text_all) + direction(txt, txt_m, image_all)) / 2


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("with_ids", [False, True])
def test_itc_distill_matches_naive_loop_values_and_gradients(alpha: float, with_ids: bool) -> None:
    b, q, d, scale = 5, 7, 8, 12.5
    img, txt = _unit(b, d, seed=0).requires_grad_(), _unit(b, d, seed=1).requires_grad_()
    img_m, txt_m = _unit(b, d, seed=2), _unit(b, d, seed=3)
    img_q, txt_q = _unit(q, d, seed=4), _unit(q, d, seed=5)
    ids = torch.tensor([0, 1, 1, 2, 3]) if with_ids else None  # rows 1 and 2: two captions of one image
    qids = torch.tensor([9, 0, 8, 2, 7, 7, 6]) if with_ids else None  # the queue holds images 0 and 2 again
    kw = {"image_ids": ids, "queue_ids": qids}
    loss, sim_i2t, sim_t2i = itc_distill_loss(img, txt, img_m, txt_m, img_q, txt_q, scale, alpha, **kw)
    img2, txt2 = img.detach().clone().requires_grad_(), txt.detach().clone().requires_grad_()
    naive = _naive_itc(img2, txt2, img_m, txt_m, img_q, txt_q, scale, alpha, ids, qids)
    assert sim_i2t.shape == sim_t2i.shape == (b, b + q)
    torch.testing.assert_close(loss.double(), naive.double(), atol=1e-5, rtol=1e-5)
    loss.backward()
    naive.backward()
    torch.testing.assert_close(img.grad.double(), img2.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(txt.grad.double(), txt2.grad, atol=1e-5, rtol=1e-4)


def test_itc_distill_without_queue_or_distillation_is_clip_loss() -> None:
    img, txt = _unit(6, 4, seed=7).float(), _unit(6, 4, seed=8).float()
    empty = torch.zeros(0, 4)
    loss, _, _ = itc_distill_loss(img, txt, img, txt, empty, empty, 10.0, 0.0)
    torch.testing.assert_close(loss, clip_loss(img, txt, torch.tensor(10.0)), atol=1e-6, rtol=1e-6)


def test_itc_distill_checks_arguments() -> None:
    img = _unit(3, 4, seed=0).float()
    with pytest.raises(ValueError, match="alpha"):
        itc_distill_loss(img, img, img, img, img, img, 10.0, 1.5)
    with pytest.raises(ValueError, match="text_queue must have shape"):
        itc_distill_loss(img, img, img, img, img, img[:2], 10.0, 0.5)
    with pytest.raises(ValueError, match="both image_ids and queue_ids"):
        itc_distill_loss(img, img, img, img, img, img, 10.0, 0.5, image_ids=torch.arange(3))


def test_itm_negatives_never_pick_the_same_image() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    sim_i2t, sim_t2i = torch.randn(6, 10, generator=g) * 5, torch.randn(6, 10, generator=g) * 5
    for _ in range(200):
        neg_image, neg_text = sample_itm_negatives(sim_i2t, sim_t2i, ids, generator=g)
        assert bool((ids[neg_image] != ids).all()) and bool((ids[neg_text] != ids).all())


def test_itm_negatives_follow_the_softmaxed_similarities() -> None:
    # Row 0's weights over candidates 1..3 are softmax([2, 1, 0]) (+1e-4); the draw frequencies match.
    sim = torch.tensor([[9.0, 2.0, 1.0, 0.0], [0.0, 9.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0], [0.0, 0.0, 0.0, 9.0]])
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(4)
    n = 20000
    for _ in range(n // 100):
        draws = torch.stack([sample_itm_negatives(sim, sim, generator=g)[0][0] for _ in range(100)])
        counts += torch.bincount(draws, minlength=4).float()
    expected = F.softmax(sim[0], dim=0) + 1e-4
    expected[0] = 0
    expected = expected / expected.sum()
    assert counts[0] == 0
    torch.testing.assert_close(counts / n, expected, atol=0.015, rtol=0)


def test_itm_negatives_need_two_images() -> None:
    with pytest.raises(ValueError, match="two different images"):
        sample_itm_negatives(torch.zeros(3, 3), torch.zeros(3, 3), torch.tensor([4, 4, 4]))


def test_itm_loss_is_naive_binary_cross_entropy() -> None:
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1]])
    labels = torch.tensor([1, 0, 1])
    naive = -sum(math.log(math.exp(r[y]) / (math.exp(r[0]) + math.exp(r[1]))) for r, y in zip(logits.tolist(), labels.tolist())) / 3
    assert itm_loss(logits, labels).item() == pytest.approx(naive, rel=1e-6)
    with pytest.raises(ValueError, match="logits \\(N, 2\\)"):
        itm_loss(torch.zeros(3, 3), labels)


SPECIAL = (0, 1, 2, 3, 4)  # coembed's BPE: <pad>, <sot>, <eot>, <unk>, <mask>


def test_mask_tokens_rates_and_exclusions() -> None:
    g = torch.Generator().manual_seed(0)
    vocab = 50
    tokens = torch.randint(5, vocab, (400, 64), generator=g)
    tokens[:, 0], tokens[:, -8:] = 1, 0  # start token and padding
    tokens[:, -9] = 2
    inputs, labels = mask_tokens(tokens, mask_id=4, vocab_size=vocab, special_ids=SPECIAL, generator=g)
    chosen = labels != IGNORE_INDEX
    ordinary = tokens >= 5
    assert not bool((chosen & ~ordinary).any())  # specials and padding never chosen
    assert bool((labels[chosen] == tokens[chosen]).all())
    assert bool((inputs[~chosen] == tokens[~chosen]).all())
    n = int(chosen.sum())
    assert n / int(ordinary.sum()) == pytest.approx(0.15, abs=0.01)
    masked = (inputs == 4) & chosen
    randomised = chosen & ~masked & (inputs != tokens)
    kept = chosen & (inputs == tokens)
    assert int(masked.sum()) / n == pytest.approx(0.8, abs=0.02)
    # a random draw can hit the original token (1 in 45 here): it then counts as kept
    assert (int(randomised.sum()) + int(kept.sum())) / n == pytest.approx(0.2, abs=0.02)
    assert int(randomised.sum()) / n == pytest.approx(0.1 * 44 / 45, abs=0.015)
    assert not bool(torch.isin(inputs[randomised], torch.tensor(SPECIAL)).any())


def test_mask_tokens_is_reproducible_with_a_generator() -> None:
    tokens = torch.randint(5, 30, (8, 16), generator=torch.Generator().manual_seed(3))
    a = mask_tokens(tokens, mask_id=4, vocab_size=30, special_ids=SPECIAL, generator=torch.Generator().manual_seed(9))
    b = mask_tokens(tokens, mask_id=4, vocab_size=30, special_ids=SPECIAL, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mlm_loss_matches_naive_mean_over_chosen_positions() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX], [4, IGNORE_INDEX, 0]])
    terms = [-(logits[b, t, labels[b, t]] - torch.logsumexp(logits[b, t], dim=0)) for b in range(2) for t in range(3)
             if labels[b, t] != IGNORE_INDEX]
    naive = sum(terms) / len(terms)
    torch.testing.assert_close(mlm_loss(logits, labels), naive)


def test_mlm_loss_with_nothing_chosen_is_zero_not_nan() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 3), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
