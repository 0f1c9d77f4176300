"""coembed's global losses across 2 gloo processes against OpenCLIP's own distributed losses
(``ClipLoss(local_loss=True, gather_with_grad=True)`` and ``SigLipLoss`` with its neighbour exchange),
run on the same local features in the same processes.

With equal local batches, OpenCLIP's per-rank loss is the mean over the rank's rows, coembed's share
is the rank's part of the global mean: ``openclip = world_size * coembed`` for the loss and for the
gradients of the local features (both sum what every rank's loss sends to a rank's rows).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from coembed.losses.distributed import local_clip_loss, local_siglip_loss
from tests.helpers import free_port, torchrun_env

open_clip_loss = pytest.importorskip("open_clip.loss")

LOCAL, DIM, WORLD = 4, 16, 2


def _features(rank: int):
    g = torch.Generator().manual_seed(10 + rank)
    img = F.normalize(torch.randn(LOCAL, DIM, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(LOCAL, DIM, generator=g, dtype=torch.float64), dim=-1)
    return img, txt, torch.tensor(3.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)


def _run(loss_fn, rank: int):
    leaves = [t.clone().requires_grad_() for t in _features(rank)]
    loss = loss_fn(*leaves)
    loss.backward()
    return [loss.detach()] + [t.grad if t.grad is not None else torch.zeros(()) for t in leaves]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torchrun_env(rank, world, port)
    dist.init_process_group("gloo")
    try:
        oc_clip = open_clip_loss.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)
        oc_siglip = open_clip_loss.SigLipLoss(rank=rank, world_size=world)
        results = {
            "coembed_clip": _run(lambda i, t, s, b: local_clip_loss(i, t, s), rank),
            "openclip_clip": _run(lambda i, t, s, b: oc_clip(i, t, s), rank),
            "coembed_siglip": _run(local_siglip_loss, rank),
            "openclip_siglip": _run(lambda i, t, s, b: oc_siglip(i, t, s, b), rank),
        }
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_global_losses_match_openclip_distributed(tmp_path) -> None:
    mp.spawn(_worker, args=(WORLD, free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name in ("clip", "siglip"):
            ours, theirs = r[f"coembed_{name}"], r[f"openclip_{name}"]
            torch.testing.assert_close(ours[0] * WORLD, theirs[0], rtol=0, atol=1e-12, msg=f"{name} loss, rank {rank}")
            for i, what in ((1, "image features"), (2, "text features"), (3, "scale"), (4, "bias")):
                torch.testing.assert_close(ours[i] * WORLD, theirs[i], rtol=0, atol=1e-12, msg=f"{name} {what}, rank {rank}")
