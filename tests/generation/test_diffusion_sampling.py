"""DDIM sampling: against diffusers' DDIMScheduler, against a naive DDPM ancestral sampler (steps == T, eta=1),
exact recovery of x0 from its true noise, classifier-free guidance, and sample_images' contract."""

from __future__ import annotations

import math

import pytest
import torch

from coembed.generation.diffusion import ddim_sample, ddim_timesteps, guided_denoiser, sample_images
from coembed.models.diffusion import Diffusion, DiffusionConfig, alphas_cumprod
from coembed.tokenizer import Tokenizer

torch.set_num_threads(1)
SHAPE = (3, 4, 4)


def fake_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic, nonlinear stand-in for a network."""
    return torch.tanh(0.7 * x + t.view(-1, 1, 1, 1).to(x.dtype) / 1000) * 1.3


def generators(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 100 + i) for i in range(n)]


@pytest.mark.parametrize("steps,eta", [(50, 0.0), (10, 0.0), (10, 1.0), (20, 0.5)])
def test_ddim_matches_diffusers(steps: int, eta: float) -> None:
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                    set_alpha_to_one=True, timestep_spacing="trailing")
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == ddim_timesteps(1000, steps)
    ours = ddim_sample(fake_eps, alphas_cumprod("cosine", 1000), generators(3), SHAPE, steps=steps, eta=eta)
    gens = generators(3)
    x = torch.stack([torch.randn(SHAPE, generator=g) for g in gens])
    for t in sched.timesteps:
        noise = torch.stack([torch.randn(SHAPE, generator=g) for g in gens]) if eta > 0 else None
        eps = fake_eps(x, torch.full((3,), int(t)))
        x = sched.step(eps, t, x, eta=eta, use_clipped_model_output=True, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours, x, atol=2e-4, rtol=1e-4)  # diffusers keeps the schedule in float32


def test_every_step_with_eta_1_is_ddpm_ancestral_sampling() -> None:
    T = 50
    abar = alphas_cumprod("cosine", T)
    ours = ddim_sample(fake_eps, abar, generators(2), SHAPE, steps=T, eta=1.0)
    # Ho et al. 2020, eq. 6-7: x_{t-1} ~ N(mean(x_t, x0), beta~_t), x0 from the predicted noise (clipped)
    gens = generators(2)
    x = torch.stack([torch.randn(SHAPE, generator=g) for g in gens]).double()
    for t in range(T - 1, -1, -1):
        z = torch.stack([torch.randn(SHAPE, generator=g) for g in gens]).double()
        a, a_prev = float(abar[t]), float(abar[t - 1]) if t > 0 else 1.0
        beta = 1 - a / a_prev
        x0 = ((x - math.sqrt(1 - a) * fake_eps(x.float(), torch.full((2,), t)).double()) / math.sqrt(a)).clamp(-1, 1)
        mean = math.sqrt(a_prev) * beta / (1 - a) * x0 + math.sqrt(1 - beta) * (1 - a_prev) / (1 - a) * x
        x = mean + math.sqrt((1 - a_prev) / (1 - a) * beta) * z
    torch.testing.assert_close(ours.double(), x, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("steps,eta", [(10, 0.0), (25, 1.0), (2, 0.0)])
def test_a_model_predicting_the_true_noise_recovers_x0(steps: int, eta: float) -> None:
    abar = alphas_cumprod("cosine", 1000)
    x0 = torch.rand(2, *SHAPE) * 2 - 1

    def true_noise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar[t].view(-1, 1, 1, 1).float()
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    torch.testing.assert_close(ddim_sample(true_noise, abar, generators(2), SHAPE, steps=steps, eta=eta), x0, atol=1e-5, rtol=0)


class FakeModel(torch.nn.Module):
    """Predicts a constant per row: the mean of its pooled condition (1 for captions, -2 for the null)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[int] = []

    def condition(self, tokens):
        return torch.zeros(len(tokens), 3, 4), torch.ones(len(tokens), 3, dtype=torch.bool), torch.ones(len(tokens), 5)

    def null_condition(self, batch, device="cpu"):
        return torch.zeros(batch, 1, 4), torch.ones(batch, 1, dtype=torch.bool), torch.full((batch, 5), -2.0)

    def forward(self, x, t, context, mask, pooled):
        self.calls.append(len(x))
        return pooled.mean(-1).view(-1, 1, 1, 1).expand_as(x) + 0 * x


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0, 7.5])
def test_guidance_is_uncond_plus_scale_times_difference(scale: float) -> None:
    model = FakeModel()
    eps = guided_denoiser(model, torch.ones(2, 3, dtype=torch.long), scale)(torch.zeros(2, *SHAPE), torch.tensor([5, 5]))
    torch.testing.assert_close(eps, torch.full((2, *SHAPE), -2.0 + scale * (1.0 - -2.0)))
    assert model.calls == ([2] if scale == 1.0 else [4])  # guidance 1 skips the null pass


def small_model() -> tuple[Diffusion, Tokenizer]:
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(["a large red circle in the middle", "a small blue star on the left"] * 20, vocab_size=300)
    cfg = DiffusionConfig(image_size=8, channels=[8, 16], attention_levels=[1], heads=2, groups=4, timesteps=100,
                          text={"vocab_size": 300, "context_length": 16, "width": 16, "layers": 1, "heads": 2}, text_embed_dim=8)
    model = Diffusion(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.abs().sum():
                p.normal_(0, 0.05)  # zero-initialised output convs would make every prediction 0
    return model, tokenizer


def test_real_model_guidance_with_the_padded_null_condition() -> None:
    model, tokenizer = small_model()
    tokens = tokenizer(["a large red circle", "a small blue star on the left"], context_length=16)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([40, 40])
    cond = model(x, t, *model.condition(tokens))
    null = model(x, t, *model.null_condition(2))
    torch.testing.assert_close(guided_denoiser(model, tokens, 2.5)(x, t), null + 2.5 * (cond - null), atol=1e-5, rtol=1e-5)


def test_sample_images_contract() -> None:
    model, tokenizer = small_model()
    prompts = ["a large red circle in the middle", "a small blue star on the left", "a red star"]
    images = sample_images(model, tokenizer, prompts, steps=5, guidance=2.0, seed=3, batch_size=2)
    assert images.shape == (3, 3, 8, 8) and images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(sample_images(model, tokenizer, prompts, steps=5, guidance=2.0, seed=3, batch_size=1), images)
    assert not torch.allclose(sample_images(model, tokenizer, prompts, steps=5, guidance=2.0, seed=4), images)
    counted = []
    sample_images(model, tokenizer, prompts[:1], steps=4, on_step=counted.append)
    assert sum(counted) == 4


@pytest.mark.parametrize("kwargs,match", [({"steps": 0}, "steps"), ({"steps": 101}, "steps"), ({"guidance": -1.0}, "guidance"),
                                          ({"eta": 2.0}, "eta"), ({"batch_size": 0}, "batch_size"), ({"prompts": [""]}, "prompts"),
                                          ({"prompts": "a red star"}, "prompts")])
def test_sample_images_refuses_bad_arguments(kwargs: dict, match: str) -> None:
    model, tokenizer = small_model()
    prompts = kwargs.pop("prompts", ["a red star"])
    with pytest.raises(ValueError, match=match):
        sample_images(model, tokenizer, prompts, **kwargs)


@pytest.mark.parametrize("steps,eta", [(20, 0.0), (10, 1.0)])
def test_v_prediction_ddim_matches_diffusers(steps: int, eta: float) -> None:
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                    set_alpha_to_one=True, timestep_spacing="trailing", prediction_type="v_prediction")
    sched.set_timesteps(steps)
    ours = ddim_sample(fake_eps, alphas_cumprod("cosine", 1000), generators(2), SHAPE, steps=steps, eta=eta, prediction="v")
    gens = generators(2)
    x = torch.stack([torch.randn(SHAPE, generator=g) for g in gens])
    for t in sched.timesteps:
        noise = torch.stack([torch.randn(SHAPE, generator=g) for g in gens]) if eta > 0 else None
        x = sched.step(fake_eps(x, torch.full((2,), int(t))), t, x, eta=eta, use_clipped_model_output=True,
                       variance_noise=noise).prev_sample
    torch.testing.assert_close(ours, x, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("steps,eta", [(1, 0.0), (10, 1.0)])
def test_a_model_predicting_the_true_v_recovers_x0(steps: int, eta: float) -> None:
    abar = alphas_cumprod("cosine", 1000)
    x0 = torch.rand(2, *SHAPE) * 2 - 1

    def true_v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar[t].view(-1, 1, 1, 1).double()
        noise = (x.double() - a.sqrt() * x0) / (1 - a).sqrt()
        return (a.sqrt() * noise - (1 - a).sqrt() * x0).float()

    out = ddim_sample(true_v, abar, generators(2), SHAPE, steps=steps, eta=eta, prediction="v")
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)  # one step suffices: v gives x0 without dividing by sqrt(abar)
