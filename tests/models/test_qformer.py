"""Q-Former: the three attention masks against a naive construction and by behaviour, the objectives,
stage 2's soft prompts, training and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coembed.models.causal_lm import LMConfig
from coembed.models.qformer import QFormer, QFormerConfig, itc_mask, itg_mask, itm_mask
from coembed.objectives import FusionBatch
from coembed.objectives.qformer import compute_losses, soft_target_loss
from tests.models.bridge_helpers import (
    TINY_LM, TINY_VISION, TRAIN_LM, TRAIN_VISION, check_trains_and_resumes_exactly, images, tokens_with_padding,
)

Q = 3


def qformer(**overrides) -> QFormer:
    torch.manual_seed(0)
    fields = {"context_length": 16, "num_queries": Q, "width": 32, "layers": 2, "heads": 2, "embed_dim": 16, "vocab_size": 64}
    cfg = QFormerConfig(vision=dict(TINY_VISION), lm=LMConfig(**TINY_LM), **{**fields, **overrides})
    return QFormer(cfg).eval()


def naive_mask(kind: str, text_mask: torch.Tensor) -> torch.Tensor:
    b, t = text_mask.shape
    n = Q + t
    out = torch.zeros(b, 1, n, n, dtype=torch.bool)
    for bi in range(b):
        for i in range(n):
            for j in range(n):
                real = j < Q or bool(text_mask[bi, j - Q])
                i_text, j_text = i >= Q, j >= Q
                if kind == "itc":
                    rule = i_text == j_text
                elif kind == "itg":
                    rule = (not j_text) or (i_text and j <= i)
                else:
                    rule = True
                out[bi, 0, i, j] = (rule and real) or i == j
    return out


@pytest.mark.parametrize(("kind", "fn"), [("itc", itc_mask), ("itg", itg_mask), ("itm", itm_mask)])
def test_masks_equal_a_naive_construction(kind, fn) -> None:
    text_mask = tokens_with_padding(length=6) != 0
    assert torch.equal(fn(Q, text_mask), naive_mask(kind, text_mask))


def run(model: QFormer, pics: torch.Tensor, tokens: torch.Tensor, mask_fn):
    with torch.no_grad():
        return model.forward_features(model.image_features(pics), tokens, mask_fn)


def test_itc_queries_ignore_the_text_and_the_text_ignores_the_image() -> None:
    model, pics, tokens = qformer(), images(), tokens_with_padding(length=8)
    other = tokens.clone()
    other[:, 1:4] = 7
    q1, t1 = run(model, pics, tokens, itc_mask)
    q2, _ = run(model, pics, other, itc_mask)
    _, t3 = run(model, images(seed=9), tokens, itc_mask)
    assert torch.allclose(q1, q2, atol=1e-6) and torch.allclose(t1, t3, atol=1e-6)
    alone, _ = model.forward_features(model.image_features(pics), None)  # the query-only pass
    assert torch.allclose(q1, alone, atol=1e-5)


def test_itg_text_sees_queries_and_earlier_text_only_and_queries_never_see_text() -> None:
    model, pics, tokens = qformer(), images(), tokens_with_padding(length=8)
    q1, t1 = run(model, pics, tokens, itg_mask)
    later = tokens.clone()
    later[:, 4:] = 9  # tokens after position 3 change
    q2, t2 = run(model, pics, later, itg_mask)
    assert torch.allclose(q1, q2, atol=1e-6)
    assert torch.allclose(t1[:, :4], t2[:, :4], atol=1e-6) and not torch.allclose(t1[:, 4:], t2[:, 4:])
    _, t3 = run(model, images(seed=9), tokens, itg_mask)
    assert not torch.allclose(t1[:, :1], t3[:, :1])  # the first token already reads the image (via the queries)


def test_itm_queries_see_the_text() -> None:
    model, pics, tokens = qformer(), images(), tokens_with_padding(length=8)
    other = tokens.clone()
    other[:, 2] = 7
    q1, _ = run(model, pics, tokens, itm_mask)
    q2, _ = run(model, pics, other, itm_mask)
    assert not torch.allclose(q1, q2)


def test_cross_attention_every_other_block() -> None:
    model = qformer(layers=4)
    assert [block.cross for block in model.blocks] == [True, False, True, False]


def test_itc_similarity_is_the_best_query() -> None:
    model = qformer()
    image_emb = torch.nn.functional.normalize(torch.randn(2, Q, 16), dim=-1)
    text_emb = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    sims = model.itc_similarity(image_emb, text_emb)
    for i in range(2):
        for m in range(4):
            best = max(float(image_emb[i, q] @ text_emb[m]) for q in range(Q))
            assert sims[i, m].item() == pytest.approx(model.temperature().item() * best, rel=1e-5)


def test_soft_target_loss_with_a_repeated_image() -> None:
    sims = torch.randn(3, 3)
    ids = torch.tensor([0, 0, 1])
    t = torch.tensor([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1.0]])
    want = (-(sims.log_softmax(1) * t).sum(1).mean() - (sims.T.log_softmax(1) * t).sum(1).mean()) / 2
    assert soft_target_loss(sims, ids).item() == pytest.approx(want.item(), rel=1e-6)


def test_stage_1_terms_and_stage_2_soft_prompts() -> None:
    batch = FusionBatch(images(4), tokens_with_padding(4, 8), torch.arange(4), negatives=tokens_with_padding(4, 8, seed=5))
    model = qformer().train()
    losses = compute_losses(model, batch, progress=0.0, weights={}, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"itc", "itg", "itm"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.lm_proj.weight.grad is None and model.queries.grad is not None
    stage2 = qformer(stage=2)
    with torch.no_grad():
        prompts = stage2.soft_prompts(batch.images)
        assert prompts.shape == (4, Q, 32)
        from coembed.models.causal_lm import forward_with_prefix

        want = forward_with_prefix(stage2.lm, prompts, batch.tokens, 0)
        assert torch.equal(stage2(batch.images, batch.tokens), want)
    assert set(compute_losses(stage2, batch, progress=0.0, weights={}, generator=torch.Generator())) == {"lm"}
    assert not any(p.requires_grad for n, p in stage2.named_parameters() if n.startswith(("lm.", "visual.")))


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="stage must be 1"):
        qformer(stage=0)
    with pytest.raises(ValueError, match="width .30. must be divisible by heads .4."):
        qformer(heads=4, width=30)


@pytest.mark.parametrize("stage", [1, 2])
def test_qformer_tiny_trains_and_resumes_exactly(shapes_data: Path, tmp_path: Path, monkeypatch, stage: int) -> None:
    model = {**TRAIN_VISION, **TRAIN_LM, "width": 32, "layers": 2, "num_queries": 4, "stage": stage}
    val = check_trains_and_resumes_exactly(shapes_data, tmp_path, monkeypatch, "qformer-tiny", model)
    assert 0 < val["val_caption_loss"] < 10
    if stage == 1:
        assert 0 <= val["val_itm_pair_acc"] <= 1
