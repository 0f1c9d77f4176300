"""Contrastive gradient accumulation with a feature cache (GradCache; OpenCLIP's ``--accum-freq``).

Accumulating the gradients of k small contrastive batches is *not* the gradient of one batch k times
larger: in-batch negatives would only span each micro-batch. Here the loss always sees the whole
batch, while activations are only ever held for one micro-batch:

1. embed every micro-batch without gradients and cache the features;
2. compute the loss on the concatenated features (leaves with ``requires_grad``) and backpropagate
   it to them: ``dL/dfeatures`` for the whole batch, and the gradient of anything else the loss uses
   (the learned temperature);
3. re-embed each micro-batch with gradients and push the cached feature gradients through it.

The RNG state is replayed between steps 1 and 3, so dropout and patch dropout draw the same masks
twice, and buffers (BatchNorm running statistics) are restored after step 1 so they are updated
once per micro-batch, not twice. The gradients equal the large batch's (up to float rounding) for
models without batch statistics; a BatchNorm layer (the ``conv`` stem) normalises each micro-batch
by its own statistics, as with any accumulation. The cost is one extra forward pass per micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Encode = Callable[[Any], tuple[Tensor, Tensor]]  # micro-batch -> (image features, text features)
Loss = Callable[[Tensor, Tensor], Tensor]  # whole-batch (image, text) features -> scalar loss


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def cached_backward(encode: Encode, micro_batches: Sequence[Any], loss_fn: Loss, device: torch.device | str = "cpu",
                    before_last: Callable[[], Any] | None = None, model: torch.nn.Module | None = None) -> Tensor:
    """Backpropagate ``loss_fn`` of the whole batch through ``encode`` one micro-batch at a time.

    Args:
        encode: embeds one micro-batch (with the model's parameters; called twice per micro-batch).
        micro_batches: the parts of the batch, in order.
        loss_fn: the loss of the concatenated features; gradients of the parameters it uses directly
            (e.g. the logit scale) are accumulated as usual.
        device: where the model runs (for the RNG state to replay).
        before_last: called before the last micro-batch's backward, e.g. to leave DDP's ``no_sync``.
        model: whose buffers the no-gradient pass must leave as they were (running statistics).

    Returns:
        The detached loss. Parameter ``.grad``\\ s hold the whole batch's gradient (accumulated: zero
        them before).
    """
    device = torch.device(device)
    states, images, texts = [], [], []
    buffers = [(b, b.clone()) for b in model.buffers()] if model is not None else []
    with torch.no_grad():
        for part in micro_batches:
            states.append(_rng_state(device))
            image, text = encode(part)
            images.append(image)
            texts.append(text)
        for buffer, saved in buffers:
            buffer.copy_(saved)
    image_all = torch.cat(images).detach().requires_grad_()
    text_all = torch.cat(texts).detach().requires_grad_()
    loss = loss_fn(image_all, text_all)
    loss.backward()
    after = _rng_state(device)
    start = 0
    for k, (part, state) in enumerate(zip(micro_batches, states)):
        _set_rng_state(state, device)
        if k == len(micro_batches) - 1 and before_last is not None:
            before_last()
        image, text = encode(part)
        rows = slice(start, start + image.shape[0])
        torch.autograd.backward([image, text], [image_all.grad[rows], text_all.grad[rows]])
        start += image.shape[0]
    _set_rng_state(after, device)
    return loss.detach()
