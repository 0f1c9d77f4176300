"""One optimisation step of a fusion family (ALBEF/BLIP, ViLT, VLMo): the family's objective, a
weighted sum of its loss terms, backward, clip, update.

The family's ``compute_losses`` (see :mod:`coembed.objectives`) returns the unweighted terms; this
step weights and sums them, so ``loss_weights`` is a training setting, not a model one.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from types import ModuleType

import torch
from torch import nn

from coembed.errors import ConfigError, TrainingDiverged
from coembed.layers.kernels import attention_kernel
from coembed.models.dual_encoder import MAX_LOGIT_SCALE
from coembed.models.families import OBJECTIVES
from coembed.objectives import FusionBatch
from coembed.train.distributed import DistEnv, all_reduce_gradients, broadcast_state
from coembed.train.step import StepResult


def objective_module(family: str) -> ModuleType:
    """The objective module of ``family``; ValueError for a family without one (the dual encoder)."""
    if family not in OBJECTIVES:
        raise ValueError(f"model family {family!r} has no fusion objective; known: {', '.join(sorted(OBJECTIVES)) or 'none'}")
    return importlib.import_module(OBJECTIVES[family])


def weighted_total(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """``sum(weights.get(name, 1) * term)`` in float32; ConfigError for a non-zero weight naming no term.

    A zero weight may name a term the objective did not compute: objectives skip the terms switched off
    (ALBEF's MLM at ``loss_weights.mlm=0``) rather than compute them for nothing."""
    unknown = sorted(name for name, weight in weights.items() if name not in terms and weight != 0)
    if unknown:
        raise ConfigError(f"loss_weights name(s) {', '.join(unknown)} that this objective does not compute; it computes "
                         f"{', '.join(sorted(terms))}")
    if not terms:
        raise ValueError("the objective returned no loss terms")
    return sum(weights.get(name, 1.0) * term.float() for name, term in terms.items())


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random source of one step (ITM negatives, MLM masks): a function of (seed, step) only, so a
    resumed run draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 7919 * step)


def _rank_generator(seed: int, step: int, env: DistEnv | None) -> torch.Generator:
    """:func:`step_generator`, offset per rank so ranks draw different negatives and masks."""
    rank = env.rank if env is not None else 0
    return step_generator(seed + 104_729 * rank, step) if rank else step_generator(seed, step)


def fusion_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: FusionBatch,
    *,
    compute_losses: Callable[..., dict[str, torch.Tensor]],
    weights: dict[str, float],
    progress: float,
    seed: int,
    step: int,
    bf16: bool,
    grad_clip: float | None,
    attention: str = "auto",
    env: DistEnv | None = None,
) -> StepResult:
    """Run one update; a non-finite loss or gradient raises before the weights change.

    Returns the weighted total as ``loss`` and each unweighted term in ``terms``. With a multi-process
    ``env``, ``batch`` is this rank's share: its objective (with rank-local negatives) is computed
    here, gradients are averaged over ranks and ``loss`` is the ranks' mean.
    """
    model.train()
    device = batch.images.device
    with attention_kernel(attention, device, bf16=bf16):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            terms = compute_losses(model, batch, progress=progress, weights=weights, generator=_rank_generator(seed, step, env))
        loss = weighted_total(terms, weights)
        loss.backward()
    if env is not None and env.enabled:  # each rank's objective on its own pairs: average, as DDP
        all_reduce_gradients(model, env, average=True)
        loss = torch.tensor(env.sum([loss.item()])[0] / env.world_size)
    if not torch.isfinite(loss):  # before the update: the weights stay as they were
        detail = ", ".join(f"{k} {v.item():.4g}" for k, v in terms.items())
        raise TrainingDiverged(f"loss became {loss.item()} at step {step} ({detail})")
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
    if not torch.isfinite(norm):
        raise TrainingDiverged(f"gradient norm became {norm.item()} at step {step}")
    optimizer.step()
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, torch.Tensor):
        with torch.no_grad():
            scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
    if env is not None and env.enabled:
        broadcast_state(model, env, parameters=False)  # rank 0's buffers (statistics, queues) everywhere
    return StepResult(loss=loss.item(), grad_norm=norm.item(), terms={k: v.item() for k, v in terms.items()})
