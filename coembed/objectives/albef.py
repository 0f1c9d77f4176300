"""ALBEF's pre-training objective: ITC with momentum distillation, ITM with hard negatives, MLM.

One call per training step (see :mod:`coembed.objectives` for the contract):

1. the momentum encoders take an EMA step, then embed the batch (targets and queue entries);
2. ITC: :func:`~coembed.losses.matching.itc_distill_loss` against the momentum features and the
   queues, image ids marking every candidate of the same image as a positive (BLIP); alpha ramps
   linearly from 0 to ``cfg.alpha`` over the first ``cfg.alpha_ramp`` of training (ALBEF: the first
   epoch);
3. ITM: the B matched pairs, one hard negative image per text and one hard negative text per image
   (drawn from the ITC similarities, same-image candidates masked), plus the manifest's hard-negative
   caption of each image when the batch has one;
4. MLM: BERT masking of the captions, predicted by the fusion encoder with the image in context.

Not done here (as in ALBEF's paper but not essential): momentum distillation of the MLM targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coembed.losses.matching import IGNORE_INDEX, itc_distill_loss, itm_loss, mask_tokens, mlm_loss, sample_itm_negatives
from coembed.models.fusion import FusionModel
from coembed.objectives import FusionBatch


def distill_alpha(alpha: float, progress: float, ramp: float) -> float:
    """ALBEF's warm-up of the distillation weight: ``alpha * min(1, progress / ramp)``."""
    return alpha * min(1.0, max(progress, 0.0) / ramp)


def compute_losses(model: FusionModel, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The unweighted ``itc``, ``itm`` and ``mlm`` losses of one batch (``weights`` is the trainer's;
    a term weighted 0 is not computed)."""
    ids = batch.image_ids.to(batch.images.device, torch.long)
    image_tokens = model.image_tokens(batch.images)  # (B, N, vision width)
    hidden, mask = model.encode_text_tokens(batch.tokens)  # (B, T, width), (B, T)
    losses: dict[str, torch.Tensor] = {}
    sims = _itc(model, batch, image_tokens, hidden, mask, ids, progress, losses)
    if weights.get("itm", 1.0) != 0:
        losses["itm"] = _itm(model, batch, image_tokens, hidden, mask, sims, ids, generator)
    if weights.get("mlm", 1.0) != 0:
        losses["mlm"] = _mlm(model, batch.tokens, image_tokens, generator)
    return losses


def _itc(model: FusionModel, batch: FusionBatch, image_tokens: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor,
         ids: torch.Tensor, progress: float, losses: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Adds ``losses["itc"]``, pushes the momentum features into the queues, returns the similarities."""
    image_emb = F.normalize(model.visual.forward_head(image_tokens), dim=-1)
    text_emb = F.normalize(model.text_proj(model.pool_text(hidden, mask)), dim=-1)
    model.momentum_update()
    image_m, text_m = model.momentum_features(batch.images, batch.tokens)
    image_q, text_q, ids_q = model.queue()
    alpha = distill_alpha(model.cfg.alpha, progress, model.cfg.alpha_ramp)
    loss, sim_i2t, sim_t2i = itc_distill_loss(image_emb, text_emb, image_m, text_m, image_q.clone(), text_q.clone(),
                                              model.temperature(), alpha, image_ids=ids, queue_ids=ids_q.clone())
    model.enqueue(image_m, text_m, ids)
    losses["itc"] = loss
    return sim_i2t.detach(), sim_t2i.detach()


def _itm(model: FusionModel, batch: FusionBatch, image_tokens: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor,
         sims: tuple[torch.Tensor, torch.Tensor], ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Matching loss over B positives, 2B sampled hard negatives and B manifest negatives (if any)."""
    neg_image, neg_text = sample_itm_negatives(*sims, ids, generator=generator)
    texts = [hidden, hidden, hidden[neg_text]]
    masks = [mask, mask, mask[neg_text]]
    images = [image_tokens, image_tokens[neg_image], image_tokens]
    if batch.negatives is not None:
        if batch.negatives.shape[0] != batch.tokens.shape[0]:
            raise ValueError(f"batch.negatives must hold one caption per image ({batch.tokens.shape[0]}), "
                             f"got {batch.negatives.shape[0]}")
        neg_hidden, neg_mask = model.encode_text_tokens(batch.negatives)
        texts, masks, images = [*texts, neg_hidden], [*masks, neg_mask], [*images, image_tokens]
    logits = model.itm_head_logits(model.fuse(*_pad_cat(texts, masks), torch.cat(images)))  # (kB, 2)
    b = hidden.shape[0]
    labels = torch.zeros(len(texts) * b, dtype=torch.long, device=logits.device)
    labels[:b] = 1
    return itm_loss(logits, labels)


def _pad_cat(states: list[torch.Tensor], masks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate text states of different lengths along the batch, padding (masked) to the longest."""
    length = max(s.shape[1] for s in states)
    states = [F.pad(s, (0, 0, 0, length - s.shape[1])) for s in states]  # each (B, length, W)
    masks = [F.pad(m, (0, length - m.shape[1]), value=False) for m in masks]
    return torch.cat(states), torch.cat(masks)


def _mlm(model: FusionModel, tokens: torch.Tensor, image_tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    cfg = model.cfg.text
    inputs, labels = mask_tokens(tokens, mask_id=cfg.mask_id, vocab_size=cfg.vocab_size, special_ids=cfg.special_ids,
                                 generator=generator)
    hidden, mask = model.encode_text_tokens(inputs)
    fused = model.fuse(hidden, mask, image_tokens)  # (B, T', W)
    labels = labels[:, : fused.shape[1]]
    chosen = labels != IGNORE_INDEX  # the vocabulary projection only where a token is predicted
    return mlm_loss(model.mlm_logits(fused[chosen])[None], labels[chosen][None])  # (1, K, vocab), (1, K)
