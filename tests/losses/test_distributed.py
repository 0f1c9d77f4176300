"""Global losses across 2 gloo CPU processes equal the single-process loss on the combined batch.

Each worker computes its rank's share and its gradients and saves them; the test process compares
them with :mod:`coembed.losses.contrastive` (the naive full-matrix losses) on the concatenated batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from coembed.losses.contrastive import clip_loss, siglip_loss
from coembed.losses.distributed import (gather_with_grad, local_chunked_clip_loss, local_chunked_siglip_loss, local_clip_loss,
                                        local_siglip_loss)

SIZES = (5, 3)  # uneven local batches: ranks drop images that fail to load
DIM = 16
CHUNK = 2  # rows of logits per block in the chunked losses: several blocks per rank
LOSSES = {  # this rank's share, from (local image features, local text features, scale, bias)
    "clip": lambda i, t, s, b: local_clip_loss(i, t, s),
    "siglip": local_siglip_loss,
    "clip_chunked": lambda i, t, s, b: local_chunked_clip_loss(i, t, s, CHUNK),
    "siglip_chunked": lambda i, t, s, b: local_chunked_siglip_loss(i, t, s, b, CHUNK),
}


def _data(dtype):
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(sum(SIZES), DIM, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    txt = F.normalize(torch.randn(sum(SIZES), DIM, generator=g, dtype=torch.float64), dim=-1).to(dtype)
    return img, txt, torch.tensor(2.5, dtype=dtype), torch.tensor(-1.5, dtype=dtype)


def _rows(rank: int) -> slice:
    start = sum(SIZES[:rank])
    return slice(start, start + SIZES[rank])


def _features_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        results = {}
        img, txt, scale, bias = _data(torch.float64)
        for name in LOSSES:
            leaves = [t.clone().requires_grad_() for t in (img[_rows(rank)], txt[_rows(rank)], scale, bias)]
            share = LOSSES[name](*leaves)
            share.backward()
            results[name] = [share.detach()] + [t.grad if t.grad is not None else torch.zeros(()) for t in leaves]
        gathered = gather_with_grad(img[_rows(rank)])
        results["gathered"] = gathered
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    """A linear 'encoder' pair under DDP: averaged parameter gradients are the global gradients."""
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        towers = torch.nn.ModuleDict({"image": torch.nn.Linear(8, DIM), "text": torch.nn.Linear(6, DIM)})
        ddp = torch.nn.parallel.DistributedDataParallel(_Pair(towers))
        g = torch.Generator().manual_seed(1)
        x_img, x_txt = torch.randn(sum(SIZES), 8, generator=g), torch.randn(sum(SIZES), 6, generator=g)
        img, txt = ddp(x_img[_rows(rank)], x_txt[_rows(rank)])
        share = local_clip_loss(img, txt, 3.0)
        (share * world).backward()  # DDP averages: undo it so the result is the global gradient
        total = share.detach().clone()
        dist.all_reduce(total)
        torch.save({"loss": total, "grads": {n: p.grad for n, p in towers.named_parameters()}}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


class _Pair(torch.nn.Module):
    def __init__(self, towers: torch.nn.ModuleDict) -> None:
        super().__init__()
        self.towers = towers

    def forward(self, x_img, x_txt):
        return F.normalize(self.towers["image"](x_img), dim=-1), F.normalize(self.towers["text"](x_txt), dim=-1)


def _spawn(worker, tmp_path) -> list[dict]:
    init = f"file://{tmp_path}/rendezvous"
    mp.spawn(worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_shares_and_gradients_equal_the_combined_batch(tmp_path):
    ranks = _spawn(_features_worker, tmp_path)
    img, txt, scale, bias = _data(torch.float64)
    for name in LOSSES:
        leaves = [t.clone().requires_grad_() for t in (img, txt, scale, bias)]
        loss = clip_loss(*leaves[:3]) if name.startswith("clip") else siglip_loss(*leaves)
        loss.backward()
        assert abs(sum(float(r[name][0]) for r in ranks) - float(loss.detach())) < 1e-12, name
        for rank, r in enumerate(ranks):
            torch.testing.assert_close(r[name][1], leaves[0].grad[_rows(rank)], rtol=0, atol=1e-12)
            torch.testing.assert_close(r[name][2], leaves[1].grad[_rows(rank)], rtol=0, atol=1e-12)
        # the scale (and bias) are replicated: their global gradient is the sum of the ranks' ones
        torch.testing.assert_close(ranks[0][name][3] + ranks[1][name][3], leaves[2].grad, rtol=0, atol=1e-12)
        if name.startswith("siglip"):
            torch.testing.assert_close(ranks[0][name][4] + ranks[1][name][4], leaves[3].grad, rtol=0, atol=1e-12)
    for r in ranks:
        torch.testing.assert_close(r["gathered"], img)


def test_ddp_gradients_equal_the_single_process_combined_batch(tmp_path):
    ranks = _spawn(_ddp_worker, tmp_path)
    torch.manual_seed(0)
    towers = torch.nn.ModuleDict({"image": torch.nn.Linear(8, DIM), "text": torch.nn.Linear(6, DIM)})
    g = torch.Generator().manual_seed(1)
    x_img, x_txt = torch.randn(sum(SIZES), 8, generator=g), torch.randn(sum(SIZES), 6, generator=g)
    img, txt = _Pair(towers)(x_img, x_txt)
    loss = clip_loss(img, txt, 3.0)
    loss.backward()
    for r in ranks:
        assert abs(float(r["loss"]) - float(loss.detach())) <= 1e-5
        for name, p in towers.named_parameters():
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=0, atol=1e-5)
