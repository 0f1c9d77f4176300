"""Data-parallel training across processes launched by ``torchrun`` (one process per GPU or CPU slot).

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus the rendezvous address) in each
process's environment; :func:`from_env` reads them and joins the process group: NCCL when the
process has a CUDA device, gloo on CPU. Without them training runs as one process, unchanged.

How the ranks share the work (see :mod:`coembed.train.loop`):

- ``batch_size`` stays the **global** batch: every rank draws the same seeded batch of sample indices
  and loads its own contiguous slice (:meth:`DistEnv.local_slice`), so a run's batches do not depend on
  the number of processes, and a run may resume on a different number of them.
- the contrastive loss is the global one (:mod:`coembed.losses.distributed`): features are gathered
  with gradients and each rank computes only its own rows of the logit matrix.
- gradients are summed across ranks after the backward pass (:func:`all_reduce_gradients`), in a few
  flat buckets. coembed reduces them itself instead of wrapping the model in
  ``DistributedDataParallel``: the feature-cache accumulation (:mod:`coembed.train.grad_cache`) runs
  several backward passes per step, the learned temperature gets its gradient outside any model
  forward, and frozen or unused parameters are common; one explicit reduction per step is correct in
  all of these cases. The cost is that communication does not overlap the backward pass.
- buffers (BatchNorm running statistics) are broadcast from rank 0 after each step, as DDP does
  before each forward, so every rank holds the model that rank 0 saves.
- rank 0 alone writes checkpoints, metrics and the progress bar, and runs validation; the others wait
  at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from coembed.errors import ConfigError

__all__ = ["DistEnv", "all_reduce_gradients", "broadcast_state", "from_env", "launched_by_torchrun"]

_BUCKET_ELEMENTS = 1 << 23  # 8 M values (32 MiB in float32) per all-reduce, near DDP's 25 MiB buckets


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_slice(self, batch: list[int]) -> list[int]:
        """This rank's contiguous share of a global batch (sizes differ by at most one)."""
        return batch[self._bounds(len(batch))]

    def local_size(self, n: int) -> int:
        """How many of a global batch of ``n`` this rank holds (the length of :meth:`local_slice`)."""
        share = self._bounds(n)
        return share.stop - share.start

    def _bounds(self, n: int) -> slice:
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over ranks (float64), one collective."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (picklable, small), in rank order."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def launched_by_torchrun(environ=os.environ) -> bool:
    return all(k in environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def from_env(device: str = "auto", environ=os.environ, timeout_minutes: float = 60) -> DistEnv:
    """The process's :class:`DistEnv`: from ``torchrun``'s variables (joining the process group once),
    or a single process. ``device`` is ``auto`` (the local GPU if there is one, else CPU), ``cpu``
    or ``cuda``."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but this machine has no CUDA device")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not launched_by_torchrun(environ):
        return DistEnv(device=torch.device("cuda" if use_cuda else "cpu"))
    try:
        rank, world, local = (int(environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise ConfigError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got {environ['RANK']!r}, "
                          f"{environ['WORLD_SIZE']!r}, {environ['LOCAL_RANK']!r}") from None
    if not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is outside 0..WORLD_SIZE-1 ({world})")
    target = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=timeout_minutes))
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=target)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def all_reduce_gradients(model: nn.Module, env: DistEnv, *, average: bool) -> None:
    """Sum (or, with ``average``, average) every trainable parameter's gradient over the ranks.

    A parameter without a gradient on this rank contributes zeros, so ranks whose graphs differ (an
    unused head) still run the same collectives; afterwards every trainable parameter has a gradient.
    """
    if not env.enabled:
        return
    params = _trainable(model)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets(params):
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])  # one dtype per bucket
        dist.all_reduce(flat)
        if average:
            flat /= env.world_size
        start = 0
        for p in bucket:
            n = p.grad.numel()
            p.grad.copy_(flat[start : start + n].view_as(p.grad))
            start += n


def _buckets(params: list[nn.Parameter]):
    """Runs of parameters of one gradient dtype, about ``_BUCKET_ELEMENTS`` values each."""
    bucket, size = [], 0
    for p in params:
        if bucket and p.grad.dtype != bucket[-1].grad.dtype:
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
        if size >= _BUCKET_ELEMENTS:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def broadcast_state(model: nn.Module, env: DistEnv, *, parameters: bool = True) -> None:
    """Make every rank's buffers (and, with ``parameters``, weights) equal to rank 0's."""
    if not env.enabled:
        return
    tensors = list(model.buffers()) + (list(model.parameters()) if parameters else [])
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)
