"""Objectives of fusion encoders (ALBEF, BLIP, ViLT, VLMo) as pure functions.

- :func:`itc_distill_loss`: ALBEF's image-text contrastive loss against momentum features and
  feature queues, with soft targets (momentum distillation) mixed in with weight ``alpha``;
  positives are every candidate with the same image id (BLIP), or the diagonal without ids (ALBEF).
- :func:`sample_itm_negatives`: one hard negative per image and per text, drawn from the softmaxed
  in-batch contrastive similarities with the positives masked out (ALBEF section 3.2).
- :func:`itm_loss`: binary matched / not matched cross-entropy on the fusion encoder's [CLS] head.
- :func:`mask_tokens` and :func:`mlm_loss`: BERT's masked language modelling, 15% of the real tokens,
  80% replaced by the mask id, 10% by a random ordinary token, 10% kept; special tokens and padding
  are never chosen.

All randomness goes through an optional ``torch.Generator`` so a seeded run is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "itc_distill_loss", "itc_targets", "itm_loss", "mask_tokens", "mlm_loss", "sample_itm_negatives"]

IGNORE_INDEX = -100  # label of positions that take no part in the MLM loss (PyTorch's default)


def itc_targets(batch_ids: Tensor | None, candidate_ids: Tensor | None, batch: int, candidates: int) -> Tensor:
    """Hard targets ``(B, N)``: each row spreads probability 1 evenly over its positives.

    Args:
        batch_ids: ``(B,)`` image id of each pair of the batch, or None (row ``i`` matches column ``i``).
        candidate_ids: ``(N,)`` image id of each candidate (the batch first, then the queue), or None.
        batch: B; candidates: N (>= B).
    """
    if (batch_ids is None) != (candidate_ids is None):
        raise ValueError("give both batch_ids and candidate_ids, or neither")
    if batch_ids is None:
        targets = torch.zeros(batch, candidates)
        targets[:, :batch].fill_diagonal_(1.0)
        return targets
    if batch_ids.shape != (batch,) or candidate_ids.shape != (candidates,):
        raise ValueError(f"batch_ids must be ({batch},) and candidate_ids ({candidates},), "
                         f"got {tuple(batch_ids.shape)} and {tuple(candidate_ids.shape)}")
    pos = (batch_ids[:, None] == candidate_ids[None, :]).float()
    if not bool((pos.sum(dim=1) > 0).all()):
        raise ValueError("every batch id must occur among the candidate ids (the batch comes first)")
    return pos / pos.sum(dim=1, keepdim=True)


def _soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


def itc_distill_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    image_emb_m: Tensor,
    text_emb_m: Tensor,
    image_queue: Tensor,
    text_queue: Tensor,
    logit_scale: Tensor | float,
    alpha: float,
    *,
    image_ids: Tensor | None = None,
    queue_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """ALBEF's contrastive loss with momentum distillation.

    The candidates of every image are the momentum text features of the batch followed by the text
    queue (and the other way round for texts). Targets are ``alpha * softmax(momentum similarities)
    + (1 - alpha) * hard targets``; the loss is the mean of the two directions' soft cross-entropy.

    Args:
        image_emb, text_emb: ``(B, D)`` normalised embeddings of the online model.
        image_emb_m, text_emb_m: ``(B, D)`` normalised embeddings of the momentum (EMA) model.
        image_queue, text_queue: ``(Q, D)`` earlier momentum embeddings (Q may be 0).
        logit_scale: multiplier of the similarities (1 / temperature).
        alpha: weight of the momentum targets, in [0, 1].
        image_ids: ``(B,)`` image id of each pair; with ``queue_ids`` (``(Q,)``), every candidate of
            the same image counts as a positive (several captions of one image, BLIP).

    Returns:
        ``(loss, sim_i2t, sim_t2i)``; the similarities ``(B, B + Q)`` are scaled, in float32, and
        their first B columns are what :func:`sample_itm_negatives` takes.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    b, q = image_emb.shape[0], image_queue.shape[0]
    for name, t, rows in (("text_emb", text_emb, b), ("image_emb_m", image_emb_m, b), ("text_emb_m", text_emb_m, b),
                          ("text_queue", text_queue, q)):
        if t.shape != (rows, image_emb.shape[1]):
            raise ValueError(f"{name} must have shape ({rows}, {image_emb.shape[1]}), got {tuple(t.shape)}")
    if (image_ids is None) != (queue_ids is None):
        raise ValueError("give both image_ids and queue_ids, or neither")
    image_all = torch.cat([image_emb_m, image_queue]).float().detach()  # (B + Q, D) candidates of texts
    text_all = torch.cat([text_emb_m, text_queue]).float().detach()  # (B + Q, D) candidates of images
    ids_all = torch.cat([image_ids, queue_ids]) if image_ids is not None else None
    targets = itc_targets(image_ids, ids_all, b, b + q).to(image_all.device)
    with torch.no_grad():
        soft_i2t = F.softmax(logit_scale * image_emb_m.float() @ text_all.T, dim=1)
        soft_t2i = F.softmax(logit_scale * text_emb_m.float() @ image_all.T, dim=1)
    sim_i2t = logit_scale * image_emb.float() @ text_all.T  # (B, B + Q)
    sim_t2i = logit_scale * text_emb.float() @ image_all.T
    loss_i2t = _soft_cross_entropy(sim_i2t, alpha * soft_i2t + (1 - alpha) * targets)
    loss_t2i = _soft_cross_entropy(sim_t2i, alpha * soft_t2i + (1 - alpha) * targets)
    return (loss_i2t + loss_t2i) / 2, sim_i2t, sim_t2i


def sample_itm_negatives(
    sim_i2t: Tensor, sim_t2i: Tensor, image_ids: Tensor | None = None, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Hard negatives for image-text matching, drawn in proportion to the softmaxed similarities.

    Args:
        sim_i2t: ``(B, N)`` image-to-text similarities; only the first B columns (the batch) are used.
        sim_t2i: ``(B, N)`` text-to-image similarities.
        image_ids: ``(B,)`` image of each pair; candidates of the same image are never drawn. Without
            ids only the pair itself is masked.
        generator: source of randomness.

    Returns:
        ``(neg_image_of_text, neg_text_of_image)``: for each text a batch row whose image it does not
        describe, and for each image a row whose text does not describe it, ``(B,)`` long each.

    Raises:
        ValueError: a row has no candidate of another image (the batch holds a single image).
    """
    b = sim_i2t.shape[0]
    if sim_i2t.shape[1] < b or sim_t2i.shape[:1] != (b,) or sim_t2i.shape[1] < b:
        raise ValueError(f"similarities must be (B, >= B), got {tuple(sim_i2t.shape)} and {tuple(sim_t2i.shape)}")
    ids = image_ids if image_ids is not None else torch.arange(b, device=sim_i2t.device)
    same = ids[:, None] == ids[None, :]  # (B, B) true where the candidate shows the same image
    if bool(same.all(dim=1).any()):
        raise ValueError("ITM negatives need at least two different images in the batch")
    with torch.no_grad():
        # ALBEF adds 1e-4 so that a candidate with underflowing probability can still be drawn.
        w_t2i = (F.softmax(sim_t2i[:, :b].float(), dim=1) + 1e-4).masked_fill(same, 0.0)
        w_i2t = (F.softmax(sim_i2t[:, :b].float(), dim=1) + 1e-4).masked_fill(same, 0.0)
        neg_image = torch.multinomial(w_t2i, 1, generator=generator).squeeze(1)
        neg_text = torch.multinomial(w_i2t, 1, generator=generator).squeeze(1)
    return neg_image, neg_text


def itm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of the 2-way matching head: ``logits`` ``(N, 2)``, ``labels`` ``(N,)`` with 1 = matched."""
    if logits.ndim != 2 or logits.shape[1] != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"itm_loss needs logits (N, 2) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    return F.cross_entropy(logits.float(), labels.long())


def mask_tokens(
    tokens: Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Iterable[int],
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT masking: choose ``prob`` of the ordinary tokens; of those 80% become ``mask_id``, 10% a
    random ordinary token, 10% stay. Special tokens (padding included) are never chosen.

    Args:
        tokens: ``(B, T)`` token ids.
        mask_id: the mask token's id.
        vocab_size: size of the vocabulary random replacements are drawn from.
        special_ids: ids that are never masked nor drawn as replacements (pad, start, end, mask, ...).
        prob: share of ordinary tokens chosen.

    Returns:
        ``(inputs, labels)``: the corrupted ids, and the original id at chosen positions with
        :data:`IGNORE_INDEX` everywhere else.
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    special = torch.tensor(sorted(set(special_ids) | {mask_id}), dtype=tokens.dtype, device=tokens.device)
    ordinary = torch.ones(vocab_size, dtype=torch.bool, device=tokens.device)
    ordinary[special[special < vocab_size]] = False
    choices = ordinary.nonzero().squeeze(1)
    if choices.numel() == 0:
        raise ValueError("mask_tokens needs at least one ordinary (non-special) token id in the vocabulary")
    u = torch.rand(3, *tokens.shape, generator=generator, device=tokens.device)
    chosen = (u[0] < prob) & ~torch.isin(tokens, special)
    to_mask = chosen & (u[1] < 0.8)
    to_random = chosen & ~to_mask & (u[2] < 0.5)  # half of the remaining 20%
    random_ids = choices[torch.randint(len(choices), tokens.shape, generator=generator, device=tokens.device)]
    inputs = torch.where(to_mask, torch.full_like(tokens, mask_id), tokens)
    inputs = torch.where(to_random, random_ids.to(tokens.dtype), inputs)
    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return inputs, labels


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the chosen positions: ``logits`` ``(B, T, V)``, ``labels`` ``(B, T)``.

    A batch in which no position was chosen gives 0 (with a gradient path), not NaN.
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"mlm_loss needs logits (B, T, V) and labels (B, T), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
