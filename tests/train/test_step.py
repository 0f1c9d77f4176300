"""One dual-encoder training step: the chunked loss and feature-cache accumulation options give the
naive step's update."""

from __future__ import annotations

import copy

import pytest
import torch

from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig, DualEncoderOutput
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig
from coembed.train.step import contrastive_loss, train_step


def _model(init_logit_bias: float | None) -> DualEncoder:
    torch.manual_seed(0)
    return DualEncoder(DualEncoderConfig(embed_dim=16, vision=VisionConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2),
                                         text=TextConfig(vocab_size=64, context_length=10, width=32, layers=1, heads=2),
                                         init_logit_bias=init_logit_bias))


def _batch(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.zeros(n, 10, dtype=torch.long)
    for i in range(n):
        length = 3 + i % 6
        tokens[i, 0], tokens[i, length - 1] = 1, 2
        tokens[i, 1 : length - 1] = torch.randint(5, 64, (length - 2,), generator=g)
    return torch.randn(n, 3, 16, 16, generator=g), tokens


@pytest.mark.parametrize(("loss", "bias"), [("clip", None), ("siglip", -10.0)])
def test_a_chunked_step_updates_the_weights_as_the_naive_step(loss: str, bias: float | None) -> None:
    images, tokens = _batch()
    naive, chunked = _model(bias), _model(bias)
    results = []
    for model, chunk in [(naive, 0), (chunked, 5)]:
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # weight change = gradient (Adam would amplify noise on ~0 grads)
        results.append(train_step(model, optimizer, images, tokens, loss_name=loss, bf16=False, grad_clip=1.0, step=1,
                                  loss_chunk_size=chunk))
    assert results[0].loss == pytest.approx(results[1].loss, abs=1e-6)
    assert results[0].grad_norm == pytest.approx(results[1].grad_norm, rel=1e-5)
    for (name, a), b in zip(naive.state_dict().items(), chunked.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_chunked_loss_refuses_what_it_does_not_compute() -> None:
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    out = DualEncoderOutput(image_emb=emb, text_emb=emb, logit_scale=torch.tensor(10.0), logit_bias=None)
    with pytest.raises(ValueError, match="chunked loss.*'triplet'"):
        contrastive_loss("triplet", out, chunk_size=2)
    with pytest.raises(ValueError, match="with hard negatives"):
        contrastive_loss("clip", out, copy.deepcopy(emb), chunk_size=2)


@pytest.mark.parametrize(("loss", "bias", "chunk"), [("clip", None, 0), ("siglip", -10.0, 0), ("clip", None, 5)])
@pytest.mark.parametrize("accum", [2, 3])
def test_accumulated_micro_batches_update_as_one_batch(loss: str, bias: float | None, chunk: int, accum: int) -> None:
    images, tokens = _batch()
    whole, accumulated = _model(bias), _model(bias)
    results = []
    for model, k in [(whole, 1), (accumulated, accum)]:
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        results.append(train_step(model, optimizer, images, tokens, loss_name=loss, bf16=False, grad_clip=1.0, step=1,
                                  loss_chunk_size=chunk, accum_steps=k))
    assert results[0].loss == pytest.approx(results[1].loss, abs=1e-6)
    assert results[0].grad_norm == pytest.approx(results[1].grad_norm, rel=1e-5)
    for (name, a), b in zip(whole.state_dict().items(), accumulated.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
