"""Global contrastive losses across data-parallel ranks, each rank computing only its own rows.

Every rank holds ``B_r`` local pairs; the global batch is ``B = sum_r B_r``. Features are gathered
from all ranks *with gradients* (:func:`gather_with_grad`), and a rank computes the rows of the global
logit matrix that belong to its local samples only (as OpenCLIP's ``local_loss=True,
gather_with_grad=True``). Each function returns the rank's **share** of the global loss: the shares of
all ranks sum to exactly the loss of the combined batch on one process
(:func:`coembed.losses.contrastive.clip_loss` / ``siglip_loss``).

Gradients: the backward of :func:`gather_with_grad` sums, over ranks, the gradient every rank's share
sends to this rank's features, so ``share.backward()`` leaves on each rank the gradient of the *global*
loss with respect to its local features. A data-parallel wrapper that averages parameter gradients
(DDP) must therefore be given ``share * world_size`` (its average is then the global gradient).

Local batch sizes may differ between ranks (images that failed to load are dropped per rank).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from coembed.losses.chunked import chunked_row_cross_entropy, chunked_sigmoid_rows

__all__ = ["gather_with_grad", "local_chunked_clip_loss", "local_chunked_siglip_loss", "local_clip_loss", "local_siglip_loss"]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        world = dist.get_world_size(group)
        sizes_list = _sizes(x.shape[0], x.device, group)
        longest = max(sizes_list)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded, group=group)
        ctx.group, ctx.sizes, ctx.rank = group, sizes_list, dist.get_rank(group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes_list)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Every rank's share sent a gradient to every rank's rows: sum them, keep this rank's rows.
        # all_reduce instead of reduce_scatter: gloo has no reduce_scatter.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def _sizes(rows: int, device: torch.device, group) -> list[int]:
    """Every rank's row count (on ``device``: nccl needs CUDA tensors, gloo CPU ones)."""
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([rows], dtype=torch.long, device=device), group=group)
    return [int(s) for s in sizes]


def gather_with_grad(x: Tensor, group=None) -> Tensor:
    """All ranks' ``x`` concatenated in rank order (rows may differ per rank), differentiable: the
    gradient reaching a rank's rows is the sum of what every rank's computation sends them."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return x
    return _GatherWithGrad.apply(x, group)


def _offset(x: Tensor, group) -> int:
    """The first global row of this rank's ``x``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return 0
    return sum(_sizes(x.shape[0], x.device, group)[: dist.get_rank(group)])


def local_clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, group=None) -> Tensor:
    """This rank's share of CLIP's symmetric InfoNCE over the global batch.

    Rows computed here: local images against all texts, local texts against all images
    (``2 * B_r * B`` logits instead of ``B * B``). Summed over ranks: ``clip_loss`` of the combined batch.
    """
    offset, all_images, all_texts = _offset(image_emb, group), gather_with_grad(image_emb, group), gather_with_grad(text_emb, group)
    total = all_images.shape[0]
    dtype = torch.promote_types(image_emb.dtype, torch.float32)
    targets = torch.arange(offset, offset + image_emb.shape[0], device=image_emb.device)
    per_image = logit_scale * (image_emb @ all_texts.T).to(dtype)
    per_text = logit_scale * (text_emb @ all_images.T).to(dtype)
    return (F.cross_entropy(per_image, targets, reduction="sum") + F.cross_entropy(per_text, targets, reduction="sum")) / (2 * total)


def local_siglip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, logit_bias: Tensor | float,
                      group=None) -> Tensor:
    """This rank's share of SigLIP's pairwise sigmoid loss over the global batch: local images against
    all texts (positives on this rank's own block). Summed over ranks: ``siglip_loss`` of the
    combined batch (a sum over all ``B * B`` pairs, divided by ``B``)."""
    offset, all_texts = _offset(image_emb, group), gather_with_grad(text_emb, group)
    total = all_texts.shape[0]
    dtype = torch.promote_types(image_emb.dtype, torch.float32)
    logits = logit_scale * (image_emb @ all_texts.T).to(dtype) + logit_bias
    labels = -torch.ones_like(logits)
    rows = torch.arange(image_emb.shape[0], device=image_emb.device)
    labels[rows, rows + offset] = 1
    return -F.logsigmoid(labels * logits).sum() / total


def local_chunked_clip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, chunk_size: int | None = None,
                            group=None) -> Tensor:
    """:func:`local_clip_loss` holding only ``chunk_size`` local rows of logits at a time (the
    memory-linear loss of :mod:`coembed.losses.chunked`, across ranks): ``O(chunk x B)`` memory."""
    offset, all_images, all_texts = _offset(image_emb, group), gather_with_grad(image_emb, group), gather_with_grad(text_emb, group)
    denominator = 2 * all_images.shape[0]
    return (chunked_row_cross_entropy(image_emb, all_texts, logit_scale, chunk_size, offset=offset, denominator=denominator)
            + chunked_row_cross_entropy(text_emb, all_images, logit_scale, chunk_size, offset=offset, denominator=denominator))


def local_chunked_siglip_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, logit_bias: Tensor,
                              chunk_size: int | None = None, group=None) -> Tensor:
    """:func:`local_siglip_loss` holding only ``chunk_size`` local rows of logits at a time."""
    offset, all_texts = _offset(image_emb, group), gather_with_grad(text_emb, group)
    return chunked_sigmoid_rows(image_emb, all_texts, logit_scale, logit_bias, chunk_size, offset=offset,
                                denominator=all_texts.shape[0])
