"""Images from text with a diffusion model (:mod:`coembed.models.diffusion`): DDIM sampling (Song et al.
2021) with classifier-free guidance (Ho & Salimans 2022).

The DDIM step from ``t`` to the next timestep ``s`` of the schedule (``abar_{-1} = 1`` after the last)::

    x0  = clip((x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), -1, 1)        # eps-prediction, or
    x0  = clip(sqrt(abar_t) x_t - sqrt(1 - abar_t) v, -1, 1)              # v-prediction (no division by sqrt(abar_t))
    eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)                       # consistent with the clipped x0
    sigma = eta * sqrt((1 - abar_s) / (1 - abar_t)) * sqrt(1 - abar_t / abar_s)
    x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z

``eta=0`` is deterministic DDIM; with ``eta=1`` and every training timestep it is DDPM's ancestral sampler
(the posterior q(x_{t-1} | x_t, x0) with the clipped x0; diffusers' ``DDIMScheduler`` with
``clip_sample=True, use_clipped_model_output=True, set_alpha_to_one=True``). The ``steps`` timesteps are
spaced "trailing" (``round(T - i T / steps) - 1``): the first is always T - 1, where the cosine schedule
leaves no signal, so sampling starts from the noise the model was trained on.

Guidance: ``out = out(null) + guidance * (out(caption) - out(null))`` of the network's eps or v; ``guidance=1`` is the conditional
model alone (one forward per step instead of two). Every image draws its noise from its own generator
seeded by ``(seed, index)``, so an image depends on its prompt, the seed and its position only, not on
the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from coembed.models.diffusion import pixels_to_unit

# (x_t (B, 3, S, S), t (B,)) -> the network's prediction (B, 3, S, S): eps or v, as the model's cfg.prediction says
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_timesteps(timesteps: int, steps: int) -> list[int]:
    """The ``steps`` timesteps visited, from T - 1 down, trailing spacing: ``round(T - i T / steps) - 1``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be an int in [1, {timesteps}] (the model's timesteps), got {steps!r}")
    return [int(round(timesteps - i * timesteps / steps)) - 1 for i in range(steps)]


def predicted_x0(x: torch.Tensor, out: torch.Tensor, abar_t: float, prediction: str) -> torch.Tensor:
    """The clean image a prediction ``out`` (eps or v) implies for ``x`` at ``abar_t``, clipped to [-1, 1]."""
    if prediction == "v":
        x0 = math.sqrt(abar_t) * x - math.sqrt(1 - abar_t) * out
    elif prediction == "eps":
        x0 = (x - math.sqrt(1 - abar_t) * out) / math.sqrt(abar_t)
    else:
        raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
    return x0.clamp(-1, 1)


def ddim_step(x: torch.Tensor, out: torch.Tensor, abar_t: float, abar_s: float, eta: float,
              noise: torch.Tensor | None, prediction: str = "eps") -> torch.Tensor:
    """One DDIM update of ``x`` (B, 3, S, S) at cumulative alpha ``abar_t`` to ``abar_s`` given the network's
    ``out`` (module docstring); ``noise`` (like ``x``) is used when ``eta > 0``."""
    x0 = predicted_x0(x, out, abar_t, prediction)
    eps = (x - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)
    sigma = eta * math.sqrt((1 - abar_s) / (1 - abar_t)) * math.sqrt(1 - abar_t / abar_s)
    out = math.sqrt(abar_s) * x0 + math.sqrt(max(1 - abar_s - sigma**2, 0.0)) * eps
    return out + sigma * noise if eta > 0 and noise is not None else out


def _randn(generators: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """One standard normal draw of ``shape`` per generator, stacked: (len(generators), *shape)."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def ddim_sample(denoise: Denoiser, abar: torch.Tensor, generators: list[torch.Generator], image_shape: tuple[int, ...], *,
                steps: int, eta: float = 0.0, prediction: str = "eps", on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Run DDIM from noise to images in [-1, 1]: (len(generators), *image_shape), on the CPU.

    Args:
        denoise: the network (guidance already folded in).
        abar: cumulative alphas (T,) of the model's schedule.
        generators: one per image; each draws its initial noise, then one noise tensor per step when ``eta > 0``.
        image_shape: (3, S, S).
        steps: number of DDIM steps, 1..T.
        eta: 0 deterministic DDIM, 1 DDPM-like ancestral noise.
        prediction: what ``denoise`` predicts, "eps" or "v".
        on_step: called with 1 after each step (a progress bar).
    """
    abar = abar.double().cpu()
    times = ddim_timesteps(len(abar), steps)
    x = _randn(generators, image_shape)
    for i, t in enumerate(times):
        out = denoise(x, torch.full((len(x),), t, dtype=torch.long)).float()
        abar_s = float(abar[times[i + 1]]) if i + 1 < len(times) else 1.0
        noise = _randn(generators, image_shape) if eta > 0 else None
        x = ddim_step(x, out, float(abar[t]), abar_s, eta, noise, prediction)
        if on_step is not None:
            on_step(1)
    return x


def guided(cond: torch.Tensor, null: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: ``null + guidance * (cond - null)`` (of eps, or equivalently of v: both are
    linear in the score at a fixed x_t)."""
    return null + guidance * (cond - null)


def guided_denoiser(model, tokens: torch.Tensor, guidance: float) -> Denoiser:
    """The model's guided prediction (eps or v) for the captions ``tokens`` (B, T): one batched forward of the
    caption and null conditions per call (only the caption's when ``guidance == 1``)."""
    device = next(model.parameters()).device
    context, mask, pooled = model.condition(tokens.to(device))
    B = len(tokens)
    if guidance != 1.0:
        null_context, null_mask, null_pooled = model.null_condition(B, device)
        pad = context.shape[1] - 1  # the null condition is one token: pad it (masked) to the captions' length
        context = torch.cat([context, torch.cat([null_context, context.new_zeros(B, pad, context.shape[2])], 1)])  # (2B, T, W)
        mask = torch.cat([mask, torch.cat([null_mask, mask.new_zeros(B, pad)], 1)])  # (2B, T)
        pooled = torch.cat([pooled, null_pooled])  # (2B, E)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 1.0:
            return model(x.to(device), t.to(device), context, mask, pooled).cpu()
        eps = model(torch.cat([x, x]).to(device), torch.cat([t, t]).to(device), context, mask, pooled).cpu()
        return guided(eps[:B], eps[B:], guidance)

    return denoise


def check_sampling(prompts: Sequence[str], *, steps: int, guidance: float, eta: float, batch_size: int, timesteps: int) -> None:
    """ValueError naming the argument for bad sampling settings or prompts."""
    if isinstance(prompts, str) or not len(prompts):
        raise ValueError("prompts must be a non-empty sequence of strings (one per image)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompts[{i}] is empty; give a caption (e.g. 'a large red circle in the middle')")
    ddim_timesteps(timesteps, steps)
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if not math.isfinite(eta) or not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def image_generator(seed: int, index: int) -> torch.Generator:
    """The random source of image ``index`` for ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


@torch.no_grad()
def sample_images(model, tokenizer, prompts: Sequence[str], *, steps: int = 50, guidance: float = 3.0,
                  eta: float = 0.0, seed: int = 0, batch_size: int = 32,
                  on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """(N, 3, S, S) float images in [0, 1], one per prompt, reproducible for a seed.

    Args:
        model: a diffusion model (``coembed.load(run).model``).
        tokenizer: its tokenizer (``coembed.load(run).tokenizer``).
        prompts: one caption per image.
        steps: DDIM steps (1..the model's timesteps).
        guidance: classifier-free guidance scale (1: none, 0: unconditional).
        eta: 0 deterministic DDIM, 1 ancestral (DDPM-like) noise.
        seed: the images are a function of (seed, prompt, position in ``prompts``).
        batch_size: images denoised together.
        on_step: called with the number of finished steps of a batch (progress bar); ``len(prompts) /
            batch_size * steps`` calls in all.
    """
    cfg = model.cfg
    check_sampling(prompts, steps=steps, guidance=guidance, eta=eta, batch_size=batch_size, timesteps=cfg.timesteps)
    from coembed.models.families import context_length

    model.eval()
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        tokens = tokenizer(chunk, context_length=context_length(model))  # (b, T)
        generators = [image_generator(seed, start + i) for i in range(len(chunk))]
        x = ddim_sample(guided_denoiser(model, tokens, guidance), model.alphas_cumprod, generators,
                        (3, cfg.image_size, cfg.image_size), steps=steps, eta=eta, prediction=cfg.prediction, on_step=on_step)
        out.append(pixels_to_unit(x))
    return torch.cat(out)
