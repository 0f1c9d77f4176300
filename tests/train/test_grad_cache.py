"""Feature-cache accumulation gives the gradients of one large batch (naive reference: one backward
through the whole batch) and, with dropout, replays the masks its no-gradient pass drew."""

import pytest
import torch
import torch.nn.functional as F

from coembed.losses.contrastive import clip_loss, siglip_loss
from coembed.train.grad_cache import cached_backward


class _Towers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 16))
        self.text = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.Dropout(0.3), torch.nn.Linear(32, 16))
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.logit_bias = torch.nn.Parameter(torch.tensor(-1.0))

    def encode(self, batch):
        x_img, x_txt = batch
        return F.normalize(self.image(x_img), dim=-1), F.normalize(self.text(x_txt), dim=-1)

    def loss(self, name, img, txt):
        if name == "clip":
            return clip_loss(img, txt, self.logit_scale.exp())
        return siglip_loss(img, txt, self.logit_scale.exp(), self.logit_bias)


def _batch(n=24):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 8, generator=g), torch.randn(n, 6, generator=g)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_k_micro_batches_equal_one_large_batch(name, k):
    x_img, x_txt = _batch()
    reference = _Towers().eval()
    full = reference.loss(name, *reference.encode((x_img, x_txt)))
    full.backward()
    model = _Towers().eval()
    parts = list(zip(x_img.chunk(k), x_txt.chunk(k)))
    loss = cached_backward(model.encode, parts, lambda i, t: model.loss(name, i, t))
    _assert_same(reference, model, full, loss)


@pytest.mark.parametrize("k", [2, 4])
def test_dropout_masks_are_replayed(k):
    """Reference: every micro-batch embedded with gradients in order (the same masks), one loss."""
    x_img, x_txt = _batch()
    parts = list(zip(x_img.chunk(k), x_txt.chunk(k)))
    reference, model = _Towers(), _Towers()
    torch.manual_seed(5)
    features = [reference.encode(p) for p in parts]
    full = reference.loss("clip", torch.cat([f[0] for f in features]), torch.cat([f[1] for f in features]))
    full.backward()
    torch.manual_seed(5)
    loss = cached_backward(model.encode, parts, lambda i, t: model.loss("clip", i, t))
    _assert_same(reference, model, full, loss)
    assert torch.get_rng_state().equal(_state_after(parts))  # the caller's RNG continues as after one pass


def _state_after(parts):
    torch.manual_seed(5)
    towers = _Towers()
    torch.manual_seed(5)
    with torch.no_grad():
        for p in parts:
            towers.encode(p)
    return torch.get_rng_state()


def _assert_same(reference, model, full, loss):
    assert abs(loss.item() - full.item()) <= 1e-5
    expected, got = _grads(reference), _grads(model)
    assert expected.keys() == got.keys()
    for n in expected:
        torch.testing.assert_close(got[n], expected[n], rtol=0, atol=1e-5, msg=n)


def test_accumulating_micro_batch_losses_is_not_the_same():
    """The baseline the cache exists to avoid: summed micro-batch losses see fewer negatives."""
    x_img, x_txt = _batch()
    reference, naive = _Towers().eval(), _Towers().eval()
    reference.loss("clip", *reference.encode((x_img, x_txt))).backward()
    for part in zip(x_img.chunk(4), x_txt.chunk(4)):
        (naive.loss("clip", *naive.encode(part)) / 4).backward()
    assert (naive.image[0].weight.grad - reference.image[0].weight.grad).abs().max() > 1e-3


def test_running_statistics_are_updated_once_per_micro_batch():
    """Reference: one with-gradient pass over the micro-batches updates BatchNorm's running stats."""
    parts = [(torch.randn(6, 8, generator=torch.Generator().manual_seed(i)), torch.randn(6, 6)) for i in range(3)]
    reference, model = _Towers(), _Towers()
    for towers in (reference, model):
        towers.image.insert(1, torch.nn.BatchNorm1d(32))
    for p in parts:
        reference.encode(p)
    cached_backward(model.encode, parts, lambda i, t: model.loss("clip", i, t), model=model)
    bn, want = model.image[1], reference.image[1]
    torch.testing.assert_close(bn.running_mean, want.running_mean)
    torch.testing.assert_close(bn.running_var, want.running_var)
    assert int(bn.num_batches_tracked) == 3
