"""One optimisation step of a dual encoder: forward, contrastive loss, backward, clip, update."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from coembed.errors import TrainingDiverged
from coembed.layers.kernels import attention_kernel
from coembed.losses.chunked import chunked_clip_loss, chunked_siglip_loss
from coembed.losses.contrastive import clip_loss, negclip_loss, siglip_loss, triplet_loss
from coembed.losses.distributed import local_chunked_clip_loss, local_chunked_siglip_loss, local_clip_loss, local_siglip_loss
from coembed.models.dual_encoder import MAX_LOGIT_SCALE, DualEncoder, DualEncoderOutput
from coembed.train.distributed import DistEnv, all_reduce_gradients, broadcast_state
from coembed.train.grad_cache import cached_backward


def contrastive_loss(name: str, out: DualEncoderOutput, negative_emb: torch.Tensor | None = None,
                     chunk_size: int = 0, distributed: bool = False) -> torch.Tensor:
    """The named objective on a forward output; embeddings are promoted to float32 first.

    ``negative_emb`` (hard-negative captions, ``clip`` only) turns CLIP's loss into NegCLIP's.
    ``chunk_size`` > 0 computes ``clip`` or ``siglip`` exactly without the batch x batch logit matrix,
    that many image rows at a time (:mod:`coembed.losses.chunked`). With ``distributed``, ``out`` holds
    this rank's pairs and the result is its share of the loss over all ranks' pairs
    (:mod:`coembed.losses.distributed`).
    """
    image_emb, text_emb = out.image_emb.float(), out.text_emb.float()
    if distributed:
        return _global_share(name, image_emb, text_emb, out, negative_emb, chunk_size)
    if chunk_size and (negative_emb is not None or name not in ("clip", "siglip")):
        raise ValueError(f"a chunked loss exists for 'clip' and 'siglip' without hard negatives, got {name!r}"
                         + (" with hard negatives" if negative_emb is not None else ""))
    if negative_emb is not None:
        if name != "clip":
            raise ValueError(f"hard negatives work with loss 'clip' only, got {name!r}")
        return negclip_loss(image_emb, text_emb, negative_emb.float(), out.logit_scale.float())
    if name == "clip":
        if chunk_size:
            return chunked_clip_loss(image_emb, text_emb, out.logit_scale.float(), chunk_size)
        return clip_loss(image_emb, text_emb, out.logit_scale.float())
    if name == "siglip":
        if out.logit_bias is None:
            raise ValueError("loss 'siglip' needs a model with a logit_bias (e.g. preset tiny-siglip)")
        if chunk_size:
            return chunked_siglip_loss(image_emb, text_emb, out.logit_scale.float(), out.logit_bias.float(), chunk_size)
        return siglip_loss(image_emb, text_emb, out.logit_scale.float(), out.logit_bias.float())
    if name == "triplet":
        return triplet_loss(image_emb, text_emb)
    raise ValueError(f"unknown loss {name!r}")


def _global_share(name, image_emb, text_emb, out, negative_emb, chunk_size) -> torch.Tensor:
    if negative_emb is not None or name not in ("clip", "siglip"):
        raise ValueError(f"across ranks the losses are 'clip' and 'siglip' without hard negatives, got {name!r}"
                         + (" with hard negatives" if negative_emb is not None else ""))
    scale = out.logit_scale.float()
    if name == "clip":
        return local_chunked_clip_loss(image_emb, text_emb, scale, chunk_size) if chunk_size else local_clip_loss(image_emb, text_emb, scale)
    if out.logit_bias is None:
        raise ValueError("loss 'siglip' needs a model with a logit_bias (e.g. preset tiny-siglip)")
    bias = out.logit_bias.float()
    if chunk_size:
        return local_chunked_siglip_loss(image_emb, text_emb, scale, bias, chunk_size)
    return local_siglip_loss(image_emb, text_emb, scale, bias)


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    terms: dict[str, float] = field(default_factory=dict)  # a fusion objective's unweighted loss terms


def train_step(
    model: DualEncoder,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    tokens: torch.Tensor,
    *,
    loss_name: str,
    bf16: bool,
    grad_clip: float | None,
    step: int,
    negative_tokens: torch.Tensor | None = None,
    pooled_text: bool = False,
    attention: str = "auto",
    loss_chunk_size: int = 0,
    accum_steps: int = 1,
    env: DistEnv | None = None,
) -> StepResult:
    """Run one update; a non-finite loss or gradient raises before the weights change.

    ``negative_tokens`` are hard-negative captions added to every image's softmax (NegCLIP). With
    ``pooled_text``, ``tokens`` and ``negative_tokens`` are a frozen tower's cached pooled features
    (B, hidden) instead of token ids, and only the projection runs on the text side. ``attention``
    picks the SDPA kernel (:func:`coembed.layers.kernels.attention_kernel`); ``loss_chunk_size`` > 0
    selects the memory-linear loss (:func:`contrastive_loss`). ``accum_steps`` > 1 embeds the batch in
    that many micro-batches through a feature cache (:mod:`coembed.train.grad_cache`): the loss and
    gradients of the whole batch, with activations held for one micro-batch at a time.

    With a multi-process ``env``, ``images`` and ``tokens`` are this rank's share of the global batch:
    the loss is the global batch's (features gathered across ranks), gradients are summed over ranks
    before clipping, and the returned loss is the global one; every rank takes the same update.
    """
    distributed = env is not None and env.enabled
    model.train()
    encode_text = model.project_text if pooled_text else model.encode_text
    with attention_kernel(attention, images.device, bf16=bf16):
        optimizer.zero_grad(set_to_none=True)
        if accum_steps > 1:
            loss = _cached_step(model, encode_text, images, tokens, loss_name, bf16, accum_steps, loss_chunk_size, negative_tokens,
                                distributed)
        else:
            with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = DualEncoderOutput(image_emb=model.encode_image(images, normalize=True), text_emb=encode_text(tokens, normalize=True),
                                        logit_scale=model.temperature(), logit_bias=model.logit_bias)
                negatives = encode_text(negative_tokens, normalize=True) if negative_tokens is not None else None
            loss = contrastive_loss(loss_name, out, negatives, chunk_size=loss_chunk_size, distributed=distributed)
            loss.backward()
        if distributed:  # the shares of the ranks sum to the global loss, their gradients to its gradient
            all_reduce_gradients(model, env, average=False)
            loss = torch.tensor(env.sum([loss.item()])[0])
        _check_loss(loss, step)  # before the update: the weights stay as they were
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    if not torch.isfinite(norm):
        raise TrainingDiverged(f"gradient norm became {norm.item()} at step {step}")
    optimizer.step()
    with torch.no_grad():  # as OpenCLIP: keep the learned temperature within [1, 100]
        model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
    if distributed:
        broadcast_state(model, env, parameters=False)  # rank 0's BatchNorm statistics everywhere, as DDP
    return StepResult(loss=loss.item(), grad_norm=norm.item())


def _check_loss(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"loss became {loss.item()} at step {step}")


def _cached_step(model, encode_text, images, tokens, loss_name, bf16, accum_steps, chunk_size, negative_tokens,
                 distributed) -> torch.Tensor:
    """Backward of the whole batch's loss through ``accum_steps`` micro-batches (a feature cache)."""
    if negative_tokens is not None:
        raise ValueError("accum_steps > 1 does not support hard negatives yet")

    def encode(part):
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=bf16):
            return model.encode_image(part[0], normalize=True), encode_text(part[1], normalize=True)

    def loss_fn(image_emb, text_emb):
        out = DualEncoderOutput(image_emb=image_emb, text_emb=text_emb, logit_scale=model.temperature(), logit_bias=model.logit_bias)
        return contrastive_loss(loss_name, out, chunk_size=chunk_size, distributed=distributed)

    parts = list(zip(images.chunk(accum_steps), tokens.chunk(accum_steps)))
    return cached_backward(encode, parts, loss_fn, images.device, model=model)
