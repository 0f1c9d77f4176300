"""The diffusion model's objective (:mod:`coembed.models.diffusion`): DDPM's simple loss.

For each image a timestep ``t ~ U{0..T-1}`` and noise ``eps ~ N(0, I)`` are drawn from the step's
``generator`` (so a resumed run draws exactly what an uninterrupted one would), ``x_t`` is the forward
process at ``t``, and the loss is the MSE between the model's prediction and its target (``eps`` or ``v``;
Ho et al. 2020, L_simple), optionally weighted per image by Min-SNR-gamma (``snr_gamma``). A share
``cond_dropout`` of the captions, also drawn from ``generator``, is replaced by the null condition
(classifier-free guidance). :func:`validation_loss` scores held-out pairs at fixed timesteps and noise,
unweighted, so val losses of different steps and runs compare.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coembed.models.diffusion import q_sample, v_target
from coembed.objectives import FusionBatch


def draws(model, batch: int, size: int, generator: torch.Generator, *, cond_dropout: float
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Timesteps (B,), noise (B, 3, S, S) and the null-condition mask (B,) of one step, all from ``generator``
    (on the CPU, so the draws do not depend on the device)."""
    t = torch.randint(0, model.cfg.timesteps, (batch,), generator=generator)
    noise = torch.randn(batch, 3, size, size, generator=generator)
    drop = torch.rand(batch, generator=generator) < cond_dropout
    return t, noise, drop


def snr_weights(abar: torch.Tensor, t: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (B,) of timesteps ``t`` (Hang et al. 2023): ``min(SNR, gamma) / SNR`` for an
    eps target, ``min(SNR, gamma) / (SNR + 1)`` for v, where ``SNR_t = abar_t / (1 - abar_t)``. Both equal
    ``min(SNR, gamma)`` times the clean-image MSE, the paper's weighting."""
    a = abar.to(t.device, torch.float64)[t]
    snr = a / (1 - a)
    return (snr.clamp(max=gamma) / (snr if prediction == "eps" else snr + 1)).float()


def denoise_loss(model, images: torch.Tensor, tokens: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 drop: torch.Tensor | None, snr_gamma: float = 0.0) -> torch.Tensor:
    """MSE between the prediction and its target (the noise, or v with ``prediction="v"``) for ``images``
    (trainer-normalised, (B, 3, S, S)) noised to timesteps ``t`` (B,) with ``noise``; captions ``tokens``
    (B, T), dropped where ``drop``. With ``snr_gamma`` > 0 each image's MSE is weighted by
    :func:`snr_weights` before the batch mean."""
    device = images.device
    x0 = model.to_pixels(images)  # (B, 3, S, S) in [-1, 1]
    t, noise = t.to(device), noise.to(device, x0.dtype)
    x_t = q_sample(x0, t, noise, model.alphas_cumprod)
    context, mask, pooled = model.condition(tokens, None if drop is None else drop.to(device))
    target = noise if model.cfg.prediction == "eps" else v_target(x0, t, noise, model.alphas_cumprod)
    pred = model(x_t, t, context, mask, pooled).float()
    if not snr_gamma:
        return F.mse_loss(pred, target.float())
    per_image = (pred - target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return (per_image * snr_weights(model.alphas_cumprod, t, snr_gamma, model.cfg.prediction)).mean()


def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``{"denoise": ...}``: the (Min-SNR-weighted, with ``snr_gamma``) denoising MSE; ``progress`` and
    ``weights`` are unused."""
    images = batch.images
    t, noise, drop = draws(model, images.shape[0], images.shape[-1], generator, cond_dropout=model.cfg.cond_dropout)
    return {"denoise": denoise_loss(model, images, batch.tokens, t, noise, drop, model.cfg.snr_gamma)}


VALIDATION_SEED = 0
# A fixed spread of timesteps (as shares of T): the val loss weighs low, middle and high noise alike.
VALIDATION_SHARES = (0.05, 0.25, 0.5, 0.75, 0.95)


@torch.no_grad()
def validation_loss(model, images: torch.Tensor, tokens: torch.Tensor, *, seed: int = VALIDATION_SEED) -> float:
    """The conditional noise-prediction MSE of ``images`` (B, 3, S, S) with captions ``tokens`` in eval
    mode, averaged over :data:`VALIDATION_SHARES` timesteps, noise drawn from ``seed``: deterministic."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for share in VALIDATION_SHARES:
        t = torch.full((images.shape[0],), int(share * (model.cfg.timesteps - 1)), dtype=torch.long)
        noise = torch.randn(images.shape[0], 3, images.shape[-2], images.shape[-1], generator=generator)
        total += denoise_loss(model, images, tokens, t, noise, None).item()
    return total / len(VALIDATION_SHARES)


@torch.no_grad()
def split_validation_loss(model, tokenizer, root, samples: list, batch_size: int = 64) -> float:
    """:func:`validation_loss` over the images of ``samples`` (under ``root``) with their first captions,
    weighted by batch size; NaN if no image loads. Each batch's noise comes from the same fixed seed."""
    from torch.utils.data import DataLoader

    from coembed.data.datasets import ImageFolderDataset, collate_images
    from coembed.loading import default_preprocess
    from coembed.models.families import context_length

    loader = DataLoader(ImageFolderDataset(root, [s.image for s in samples], default_preprocess(model)), batch_size=batch_size,
                        collate_fn=collate_images)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in loader:
        if batch.images is None:
            continue
        tokens = tokenizer([samples[i].captions[0] for i in batch.indices.tolist()], context_length=context_length(model))
        total += validation_loss(model, batch.images.to(device), tokens.to(device)) * len(batch.images)
        count += len(batch.images)
    return total / count if count else float("nan")
