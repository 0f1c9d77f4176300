"""An exponential moving average (EMA) of the trained weights, the weights a diffusion model samples with.

Diffusion models are sampled with an EMA of their weights (DDPM, ADM, Stable Diffusion: decay 0.9999 over
long runs): single-step weights carry the noise of the last mini-batches, which shows as blotchy samples.
The trainer keeps one when ``ema_decay`` > 0: after every optimizer step each trainable parameter's shadow
moves ``1 - d`` of the way to the parameter, with ``d = min(ema_decay, (1 + k) / (10 + k))`` at the
(k + 1)-th update and ``d = 0`` at the first (diffusers' ``EMAModel`` without warm-up: the shadow starts as
the weights and the short early horizon lets it forget the random init). Frozen parameters and buffers
are not averaged: they equal the model's.

Checkpoints hold the EMA weights in ``model.safetensors`` (what :func:`coembed.load`, ``coembed generate``
and evaluation use) and the raw training weights in the train state (``ema.raw.<name>``, with the update
count), so a resumed run continues both exactly. Validation during training scores the EMA weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

RAW_PREFIX = "ema.raw."
UPDATES_KEY = "ema.updates"


def ema_decay_at(decay: float, update: int) -> float:
    """The decay of the ``update``-th update (1-based): 0 at the first, then ``min(decay, (1 + k) / (10 + k))``
    with ``k = update - 1``."""
    k = update - 1
    return 0.0 if k <= 0 else min(decay, (1 + k) / (10 + k))


class WeightEMA:
    """Shadow copies of ``model``'s trainable parameters, averaged by :meth:`update`.

    Args:
        model: the model being trained (its parameter names key the shadows).
        decay: the EMA decay, in (0, 1).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.updates = 0
        self.shadow = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every shadow towards its parameter after an optimizer step."""
        self.updates += 1
        weight = 1.0 - ema_decay_at(self.decay, self.updates)
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach(), weight)

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Within the block ``model``'s trainable parameters are the EMA weights; afterwards the raw ones again."""
        params = dict(model.named_parameters())
        raw = {name: params[name].detach().clone() for name in self.shadow}
        with torch.no_grad():
            for name, value in self.shadow.items():
                params[name].copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, value in raw.items():
                    params[name].copy_(value)

    def raw_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The train-state tensors besides the EMA weights (which the model file holds): the raw trainable
        weights of ``model`` (call outside :meth:`swapped_in`) and the update count."""
        params = dict(model.named_parameters())
        return {**{RAW_PREFIX + name: params[name].detach().clone() for name in self.shadow},
                UPDATES_KEY: torch.tensor(self.updates, dtype=torch.int64)}

    @classmethod
    def resume(cls, model: nn.Module, decay: float, tensors: dict[str, torch.Tensor], source: str) -> "WeightEMA":
        """The EMA of a resumed run: ``model`` holds the checkpoint's EMA weights on entry, its raw training
        weights (from ``tensors``, :meth:`raw_tensors` as saved) on return.

        Raises:
            ValueError: ``tensors`` lacks a raw weight or the count, or has another's shape (names ``source``).
        """
        ema = cls(model, decay)
        params = dict(model.named_parameters())
        missing = sorted(RAW_PREFIX + name for name in ema.shadow if RAW_PREFIX + name not in tensors) + ([UPDATES_KEY] if UPDATES_KEY not in tensors else [])
        if missing:
            raise ValueError(f"{source}: the run trained with ema_decay but its train state lacks {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}")
        with torch.no_grad():
            for name in ema.shadow:
                raw = tensors[RAW_PREFIX + name]
                if raw.shape != params[name].shape:
                    raise ValueError(f"{source}: {RAW_PREFIX + name} has shape {tuple(raw.shape)}, the parameter {tuple(params[name].shape)}")
                params[name].copy_(raw)
        ema.updates = int(tensors[UPDATES_KEY])
        return ema
