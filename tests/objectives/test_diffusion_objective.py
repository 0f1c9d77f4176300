"""The diffusion objective against a naive reimplementation of DDPM's loss (eps and v targets), its use of
the step's generator, and the fixed-noise validation loss."""

from __future__ import annotations

import math

import pytest
import torch

from coembed.models.diffusion import Diffusion, DiffusionConfig
from coembed.objectives import FusionBatch
from coembed.objectives.diffusion import compute_losses, denoise_loss, draws, validation_loss
from coembed.transforms import CLIP_MEAN, CLIP_STD

torch.set_num_threads(1)


def small(prediction: str) -> Diffusion:
    torch.manual_seed(0)
    model = Diffusion(DiffusionConfig(image_size=8, channels=[8, 16], attention_levels=[1], heads=2, groups=4, prediction=prediction,
                                      text={"vocab_size": 50, "context_length": 8, "width": 16, "layers": 1, "heads": 2},
                                      text_embed_dim=8))
    with torch.no_grad():
        model.conv_out.weight.normal_(0, 0.1)  # zero-initialised: make the prediction depend on the input
    return model


def batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.rand(n, 3, 8, 8)  # [0, 1]
    images = (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    tokens = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0], [1, 9, 9, 2], [1, 2, 0, 0]])[:n]
    return images, tokens


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_is_the_naive_ddpm_loss(prediction: str) -> None:
    model = small(prediction)
    images, tokens = batch()
    t, noise = torch.tensor([0, 10, 500, 999]), torch.randn(4, 3, 8, 8)
    got = denoise_loss(model, images, tokens, t, noise, None)
    total = 0.0
    for i in range(4):  # one image at a time, straight from the formulas
        x0 = (images[i] * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)) * 2 - 1
        a = float(model.alphas_cumprod[t[i]])
        x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise[i]
        target = noise[i] if prediction == "eps" else math.sqrt(a) * noise[i] - math.sqrt(1 - a) * x0
        pred = model(x_t[None], t[i : i + 1], *model.condition(tokens[i : i + 1]))[0]
        total += ((pred - target) ** 2).mean().item()
    assert got.item() == pytest.approx(total / 4, rel=1e-4)


def test_draws_come_from_the_generator_only() -> None:
    model = small("v")
    images, tokens = batch()
    terms = [compute_losses(model, FusionBatch(images, tokens, torch.arange(4)), progress=0.0, weights={},
                            generator=torch.Generator().manual_seed(s))["denoise"].item() for s in (1, 1, 2)]
    assert terms[0] == terms[1] != terms[2]
    t, noise, drop = draws(model, 20000, 2, torch.Generator().manual_seed(0), cond_dropout=0.1)
    assert 0 <= t.min() and t.max() == 999 and drop.float().mean().item() == pytest.approx(0.1, abs=0.01)


def test_dropped_captions_change_the_loss() -> None:
    model = small("v")
    images, tokens = batch()
    t, noise = torch.tensor([300] * 4), torch.randn(4, 3, 8, 8)
    kept = denoise_loss(model, images, tokens, t, noise, torch.zeros(4, dtype=torch.bool))
    assert kept == denoise_loss(model, images, tokens, t, noise, None)
    assert kept != denoise_loss(model, images, tokens, t, noise, torch.ones(4, dtype=torch.bool))


def test_validation_loss_is_deterministic_and_seeded() -> None:
    model = small("v")
    images, tokens = batch()
    assert validation_loss(model, images, tokens) == validation_loss(model, images, tokens) != validation_loss(model, images, tokens, seed=1)


def test_snr_weights_are_diffusers_min_snr_weights() -> None:
    from types import SimpleNamespace

    from diffusers.training_utils import compute_snr

    from coembed.objectives.diffusion import snr_weights

    abar = small("v").alphas_cumprod
    t = torch.tensor([0, 1, 50, 200, 500, 800, 999])
    snr = compute_snr(SimpleNamespace(alphas_cumprod=abar), t)
    # diffusers' train_text_to_image.py: stack([snr, gamma]).min / snr (epsilon) or / (snr + 1) (v_prediction)
    clipped = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    torch.testing.assert_close(snr_weights(abar, t, 5.0, "eps"), clipped / snr, rtol=1e-5, atol=0)
    torch.testing.assert_close(snr_weights(abar, t, 5.0, "v"), clipped / (snr + 1), rtol=1e-5, atol=0)
    assert snr_weights(abar, torch.tensor([999]), 5.0, "eps").item() == pytest.approx(1.0)  # SNR < gamma: unweighted eps


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_loss_weights_each_image(prediction: str) -> None:
    model = small(prediction)
    images, tokens = batch()
    t, noise = torch.tensor([0, 10, 500, 999]), torch.randn(4, 3, 8, 8)
    got = denoise_loss(model, images, tokens, t, noise, None, snr_gamma=2.0)
    total = 0.0
    for i in range(4):  # each image's own MSE times min(SNR, gamma) / SNR (or / (SNR + 1)), from the formulas
        a = float(model.alphas_cumprod[t[i]])
        snr = a / (1 - a)
        weight = min(snr, 2.0) / (snr if prediction == "eps" else snr + 1)
        total += weight * denoise_loss(model, images[i : i + 1], tokens[i : i + 1], t[i : i + 1], noise[i : i + 1], None).item()
    assert got.item() == pytest.approx(total / 4, rel=1e-4)
    assert got.item() != pytest.approx(denoise_loss(model, images, tokens, t, noise, None).item(), rel=1e-3)


def test_compute_losses_uses_the_configured_gamma() -> None:
    model = small("v")
    images, tokens = batch()
    step = lambda: compute_losses(model, FusionBatch(images, tokens, torch.arange(4)), progress=0.0, weights={},  # noqa: E731
                                  generator=torch.Generator().manual_seed(3))["denoise"].item()
    plain = step()
    model.cfg.snr_gamma = 5.0
    weighted = step()
    t, noise, drop = draws(model, 4, 8, torch.Generator().manual_seed(3), cond_dropout=model.cfg.cond_dropout)
    assert weighted == pytest.approx(denoise_loss(model, images, tokens, t, noise, drop, snr_gamma=5.0).item(), rel=1e-6)
    assert weighted != pytest.approx(plain, rel=1e-3)
    assert validation_loss(model, images, tokens) == pytest.approx(validation_loss(small("v"), images, tokens), rel=1e-6)
