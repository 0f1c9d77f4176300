"""Memory-linear exact contrastive losses: CLIP's InfoNCE and SigLIP without the ``(B, B)`` matrix.

The naive losses in :mod:`coembed.losses.contrastive` build the full ``B x B`` logit matrix and
autograd keeps it (and the softmax or sigmoid of it) for the backward pass: 3-4 float32 matrices of
``B * B`` entries, 64 GiB at a batch of 65,536. The functions here give the same loss and gradients
(to float rounding) while only ever holding a block of ``chunk_size`` rows of logits:

- forward: for each block of image rows, ``logits = scale * img_block @ txt.T``; the per-row
  log-sum-exp (image-to-text) is complete within the block, the per-column log-sum-exp
  (text-to-image) is accumulated across blocks with the online (running max) formula, as
  flash-attention does for its softmax. Only ``O(B)`` statistics are saved for backward.
- backward (custom :class:`torch.autograd.Function`): each block's logits are recomputed, and the
  gradient of the loss with respect to them is formed in closed form:
  ``dL/dl_ij = (softmax_row_ij + softmax_col_ij) / (2B) - [i == j] / B`` for InfoNCE and
  ``dL/dl_ij = (sigmoid(l_ij) - [i == j]) / B`` for SigLIP; it is pushed through the matmul to the
  embeddings and reduced into the gradients of the scale (and bias).

Peak memory beyond the inputs and their gradients is a few ``chunk_size x B`` blocks; the default
chunk keeps one block near 64 MiB. The compute is one extra block matmul (the recomputation) over the
naive loss's three.

Precision: blocks are computed in ``promote_types(input dtype, float32)``, so half-precision inputs
are upcast per block (the naive loss runs its matmul in the input dtype), and float64 inputs stay
float64, which is what the exactness tests use.
"""

from __future__ import annotations

import torch
from torch import Tensor

from coembed.losses.contrastive import _check_pair, _check_scalar

__all__ = ["chunked_clip_loss", "chunked_row_cross_entropy", "chunked_sigmoid_rows", "chunked_siglip_loss", "default_chunk_size"]

_BLOCK_ELEMENTS = 1 << 24  # 16 M entries: 64 MiB per float32 block


def default_chunk_size(batch: int) -> int:
    """Rows per block so that one ``rows x batch`` block holds about 16 M entries (at least 1 row)."""
    return max(1, min(batch, _BLOCK_ELEMENTS // max(batch, 1)))


def _resolve_chunk(chunk_size: int | None, batch: int) -> int:
    if chunk_size is None:
        return default_chunk_size(batch)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return min(chunk_size, batch)


def _as_scalar(value: Tensor | float, like: Tensor) -> Tensor:
    """A 0-d tensor of ``like``'s device (a float becomes a constant without gradient)."""
    if isinstance(value, Tensor):
        return value.reshape(())
    return torch.tensor(float(value), device=like.device)


def _blocks(batch: int, chunk: int):
    for start in range(0, batch, chunk):
        yield start, min(start + chunk, batch)


def _backprop_block(grad: Tensor, sims: Tensor, scale: Tensor, imgc: Tensor, txtc: Tensor, start: int, end: int,
                    grad_img: Tensor, grad_txt: Tensor) -> Tensor:
    """Push ``dL/dlogits`` of the image rows ``start:end`` into the embedding gradients (in place).

    ``logits = scale * sims``; returns this block's share of ``dL/dscale`` (float64). ``grad`` is overwritten.
    """
    grad_scale = (grad * sims).sum(dtype=torch.float64)  # pairwise sum, float64: terms of both signs cancel
    grad.mul_(scale)  # now dL/dsims
    grad_img[start:end] = grad @ txtc
    grad_txt.addmm_(grad.T, imgc[start:end])
    return grad_scale


class _ChunkedClip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, img: Tensor, txt: Tensor, scale: Tensor, chunk: int) -> Tensor:
        dtype = torch.promote_types(img.dtype, torch.float32)
        imgc, txtc, s = img.to(dtype), txt.to(dtype), scale.to(dtype)
        batch = img.shape[0]
        row_lse = torch.empty(batch, dtype=dtype, device=img.device)
        diag = torch.empty(batch, dtype=dtype, device=img.device)
        col_max = torch.full((batch,), float("-inf"), dtype=dtype, device=img.device)
        col_sum = torch.zeros(batch, dtype=dtype, device=img.device)
        for start, end in _blocks(batch, chunk):
            logits = (imgc[start:end] @ txtc.T).mul_(s)
            row_lse[start:end] = torch.logsumexp(logits, dim=1)
            diag[start:end] = logits[:, start:end].diagonal()
            new_max = torch.maximum(col_max, logits.amax(dim=0))
            col_sum = col_sum * torch.exp(col_max - new_max) + logits.sub_(new_max).exp_().sum(dim=0)
            col_max = new_max
        col_lse = col_max + torch.log(col_sum)
        ctx.save_for_backward(img, txt, scale, row_lse, col_lse)
        ctx.chunk = chunk
        return ((row_lse - diag).mean() + (col_lse - diag).mean()) / 2

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        img, txt, scale, row_lse, col_lse = ctx.saved_tensors
        dtype = row_lse.dtype
        imgc, txtc, s = img.to(dtype), txt.to(dtype), scale.to(dtype)
        batch = img.shape[0]
        weight = grad_out.to(dtype) / (2 * batch)
        grad_img = torch.empty_like(imgc)
        grad_txt = torch.zeros_like(txtc)
        grad_scale = torch.zeros((), dtype=torch.float64, device=img.device)  # a sum over B * B terms
        for start, end in _blocks(batch, ctx.chunk):
            sims = imgc[start:end] @ txtc.T
            logits = sims * s
            grad = (logits - row_lse[start:end, None]).exp_()  # softmax over texts, per image
            grad.add_(logits.sub_(col_lse).exp_())  # softmax over images, per text
            grad.mul_(weight)
            grad[:, start:end].diagonal().sub_(2 * weight)
            grad_scale += _backprop_block(grad, sims, s, imgc, txtc, start, end, grad_img, grad_txt)
        return grad_img.to(img.dtype), grad_txt.to(txt.dtype), grad_scale.to(scale.dtype), None


class _ChunkedSiglip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, img: Tensor, txt: Tensor, scale: Tensor, bias: Tensor, chunk: int, offset: int, denominator: int) -> Tensor:
        # Image rows against every text; image i's positive is text ``offset + i`` (0 on one process).
        dtype = torch.promote_types(img.dtype, torch.float32)
        imgc, txtc, s, b = img.to(dtype), txt.to(dtype), scale.to(dtype), bias.to(dtype)
        total = torch.zeros((), dtype=torch.float64, device=img.device)  # a sum over B * B terms
        for start, end in _blocks(img.shape[0], chunk):
            logits = (imgc[start:end] @ txtc.T).mul_(s).add_(b)
            diag = logits[:, offset + start : offset + end].diagonal().clone()
            # every pair as a negative (label -1), then the diagonal corrected to label +1
            total += torch.nn.functional.softplus(logits).sum()
            total += (torch.nn.functional.softplus(-diag) - torch.nn.functional.softplus(diag)).sum()
        ctx.save_for_backward(img, txt, scale, bias)
        ctx.chunk, ctx.offset, ctx.denominator = chunk, offset, denominator
        return (total / denominator).to(dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        img, txt, scale, bias = ctx.saved_tensors
        dtype = torch.promote_types(img.dtype, torch.float32)
        imgc, txtc, s, b = img.to(dtype), txt.to(dtype), scale.to(dtype), bias.to(dtype)
        weight = grad_out.to(dtype) / ctx.denominator
        grad_img = torch.empty_like(imgc)
        grad_txt = torch.zeros_like(txtc)
        grad_scale = torch.zeros((), dtype=torch.float64, device=img.device)  # sums over B * B terms
        grad_bias = torch.zeros((), dtype=torch.float64, device=img.device)
        for start, end in _blocks(img.shape[0], ctx.chunk):
            sims = imgc[start:end] @ txtc.T
            grad = (sims * s).add_(b).sigmoid_()
            grad[:, ctx.offset + start : ctx.offset + end].diagonal().sub_(1)
            grad.mul_(weight)
            grad_bias += grad.sum(dtype=torch.float64)
            grad_scale += _backprop_block(grad, sims, s, imgc, txtc, start, end, grad_img, grad_txt)
        return (grad_img.to(img.dtype), grad_txt.to(txt.dtype), grad_scale.to(scale.dtype),
                grad_bias.to(bias.dtype), None, None, None)


class _ChunkedRowCE(torch.autograd.Function):
    """``sum_i (logsumexp_j(s * q_i . k_j) - s * q_i . k_{offset+i}) / denominator``: softmax cross
    entropy of query rows against every key, in blocks of rows. Half of CLIP's loss on one rank,
    whose queries are its local images (or texts) and keys all ranks' texts (or images)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, scale: Tensor, chunk: int, offset: int, denominator: int) -> Tensor:
        dtype = torch.promote_types(q.dtype, torch.float32)
        qc, kc, s = q.to(dtype), k.to(dtype), scale.to(dtype)
        lse = torch.empty(q.shape[0], dtype=dtype, device=q.device)
        total = torch.zeros((), dtype=torch.float64, device=q.device)
        for start, end in _blocks(q.shape[0], chunk):
            logits = (qc[start:end] @ kc.T).mul_(s)
            lse[start:end] = torch.logsumexp(logits, dim=1)
            total += (lse[start:end] - logits[:, offset + start : offset + end].diagonal()).sum()
        ctx.save_for_backward(q, k, scale, lse)
        ctx.chunk, ctx.offset, ctx.denominator = chunk, offset, denominator
        return (total / denominator).to(dtype)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, scale, lse = ctx.saved_tensors
        dtype = lse.dtype
        qc, kc, s = q.to(dtype), k.to(dtype), scale.to(dtype)
        weight = grad_out.to(dtype) / ctx.denominator
        grad_q, grad_k = torch.empty_like(qc), torch.zeros_like(kc)
        grad_scale = torch.zeros((), dtype=torch.float64, device=q.device)
        for start, end in _blocks(q.shape[0], ctx.chunk):
            sims = qc[start:end] @ kc.T
            grad = (sims * s).sub_(lse[start:end, None]).exp_()  # softmax over keys, per query
            grad[:, ctx.offset + start : ctx.offset + end].diagonal().sub_(1)
            grad.mul_(weight)
            grad_scale += _backprop_block(grad, sims, s, qc, kc, start, end, grad_q, grad_k)
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_scale.to(scale.dtype), None, None, None


def chunked_clip_loss(
    image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor | float, chunk_size: int | None = None
) -> Tensor:
    """:func:`coembed.losses.contrastive.clip_loss`, computed without the ``(B, B)`` logit matrix.

    Args:
        image_emb: ``(B, D)`` normalised image embeddings.
        text_emb: ``(B, D)`` normalised text embeddings.
        logit_scale: The multiplier (``exp`` of the learned log-scale), scalar; a tensor gets a
            gradient, a float is a constant.
        chunk_size: Image rows per block; ``None`` picks :func:`default_chunk_size`.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs), differentiable in all tensor inputs.
    """
    _check_pair(image_emb, text_emb)
    _check_scalar(logit_scale, "logit_scale")
    chunk = _resolve_chunk(chunk_size, image_emb.shape[0])
    scale = _as_scalar(logit_scale, image_emb)
    return _ChunkedClip.apply(image_emb, text_emb, scale, chunk)


def chunked_siglip_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float,
    chunk_size: int | None = None,
) -> Tensor:
    """:func:`coembed.losses.contrastive.siglip_loss`, computed without the ``(B, B)`` logit matrix.

    Args:
        image_emb: ``(B, D)`` normalised image embeddings.
        text_emb: ``(B, D)`` normalised text embeddings.
        logit_scale: The multiplier (``exp`` of the learned log-scale), scalar.
        logit_bias: The learned additive bias, scalar.
        chunk_size: Image rows per block; ``None`` picks :func:`default_chunk_size`.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs), differentiable in all tensor inputs.
    """
    _check_pair(image_emb, text_emb)
    _check_scalar(logit_scale, "logit_scale")
    _check_scalar(logit_bias, "logit_bias")
    chunk = _resolve_chunk(chunk_size, image_emb.shape[0])
    scale, bias = _as_scalar(logit_scale, image_emb), _as_scalar(logit_bias, image_emb)
    return _ChunkedSiglip.apply(image_emb, text_emb, scale, bias, chunk, 0, image_emb.shape[0])


def chunked_row_cross_entropy(queries: Tensor, keys: Tensor, logit_scale: Tensor, chunk_size: int | None, *,
                              offset: int, denominator: int) -> Tensor:
    """Query ``i``'s softmax cross entropy over all ``keys`` with target ``offset + i``, summed and
    divided by ``denominator``, holding ``chunk_size`` rows of logits at a time."""
    chunk = _resolve_chunk(chunk_size, queries.shape[0])
    return _ChunkedRowCE.apply(queries, keys, _as_scalar(logit_scale, queries), chunk, offset, denominator)


def chunked_sigmoid_rows(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, logit_bias: Tensor, chunk_size: int | None, *,
                         offset: int, denominator: int) -> Tensor:
    """SigLIP's pairwise loss of image rows against all texts (image ``i``'s positive is text
    ``offset + i``), summed and divided by ``denominator``, ``chunk_size`` rows at a time."""
    chunk = _resolve_chunk(chunk_size, image_emb.shape[0])
    return _ChunkedSiglip.apply(image_emb, text_emb, _as_scalar(logit_scale, image_emb), _as_scalar(logit_bias, image_emb),
                                chunk, offset, denominator)
