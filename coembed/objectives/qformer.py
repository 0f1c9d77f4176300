"""BLIP-2's objectives for the Q-Former (:mod:`coembed.models.qformer`).

Stage 1, three terms, each one Q-Former pass under its attention mask:

- ``itc``: queries and text in one pass under :func:`~coembed.models.qformer.itc_mask` (neither sees
  the other); image-text similarity = the best query's cosine, scaled; cross-entropy both ways with
  every pair of the same image a positive (BLIP's image ids);
- ``itg``: :func:`~coembed.models.qformer.itg_mask`, next-token loss of the caption read causally
  after the queries;
- ``itm``: :func:`~coembed.models.qformer.itm_mask` over B matched pairs, a hard negative image per
  text and a hard negative text per image drawn from the ITC similarities
  (:func:`~coembed.losses.matching.sample_itm_negatives`, same-image candidates excluded), and the
  manifest's false caption of each image when the batch has them.

Stage 2, one term ``lm``: the frozen LM's next-token loss on the caption after the soft prompts; with
``task: vqa`` the term ``answer`` on the answer tokens instead (:mod:`coembed.objectives.bridge`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coembed.losses.captioning import caption_loss
from coembed.losses.matching import itc_targets, itm_loss, sample_itm_negatives
from coembed.models.qformer import QFormer, itc_mask, itg_mask, itm_mask
from coembed.objectives import FusionBatch
from coembed.errors import ConfigError
from coembed.objectives import bridge
from coembed.objectives.common import pad_columns
from coembed.towers.text_transformer import trim_padding


def compute_losses(model: QFormer, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Stage 1: ``{"itc", "itg", "itm"}``; stage 2: ``{"lm"}`` or, on question-answer rows, ``{"answer"}``.
    ``progress`` is unused.

    Raises:
        ConfigError: question-answer rows in stage 1 (the trainer refuses that earlier; this is the guard
            for direct callers).
    """
    if model.cfg.stage == 2:
        return bridge.compute_losses(model, batch, progress=progress, weights=weights, generator=generator)
    if batch.qa_tokens is not None:
        raise ConfigError("a Q-Former in stage 1 trains on captions (ITC/ITG/ITM); VQA needs model.stage=2")
    pad = model.cfg.pad_id
    tokens = trim_padding(batch.tokens, pad)  # (B, T)
    ids = batch.image_ids.to(tokens.device, torch.long)
    image = model.image_features(batch.images)  # (B, N, width)
    query_out, text_out = model.forward_features(image, tokens, itc_mask)
    sim_i2t = model.itc_similarity(*model.itc_embeddings(query_out, text_out))  # (B, B)
    losses = {"itc": soft_target_loss(sim_i2t, ids)}
    _, text_gen = model.forward_features(image, tokens, itg_mask)
    losses["itg"] = caption_loss(model.itg_logits(text_gen), tokens, pad)
    if weights.get("itm", 1.0) != 0:
        losses["itm"] = _itm(model, batch, image, tokens, sim_i2t.detach(), ids, generator)
    return losses


def soft_target_loss(sim_i2t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies of (B, B) scaled similarities, each row's
    target spread evenly over the candidates of the same image."""
    targets = itc_targets(ids, ids, ids.shape[0], ids.shape[0]).to(sim_i2t.device)  # (B, B)
    i2t = -(F.log_softmax(sim_i2t.float(), dim=1) * targets).sum(dim=1).mean()
    t2i = -(F.log_softmax(sim_i2t.float().T, dim=1) * targets).sum(dim=1).mean()
    return (i2t + t2i) / 2


def _itm(model: QFormer, batch: FusionBatch, image: torch.Tensor, tokens: torch.Tensor, sim_i2t: torch.Tensor,
         ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Matching loss over B positives, 2B hard negatives and B manifest negatives (if any)."""
    neg_image, neg_text = sample_itm_negatives(sim_i2t, sim_i2t.T, ids, generator=generator)
    images = [image, image[neg_image], image]
    texts = [tokens, tokens, tokens[neg_text]]
    if batch.negatives is not None:
        images.append(image)
        texts.append(trim_padding(batch.negatives, model.cfg.pad_id))
    width = max(t.shape[1] for t in texts)
    query_out, _ = model.forward_features(torch.cat(images), torch.cat([pad_columns(t, width, model.cfg.pad_id) for t in texts]), itm_mask)
    labels = torch.zeros(len(texts) * tokens.shape[0], dtype=torch.long, device=tokens.device)
    labels[: tokens.shape[0]] = 1
    return itm_loss(model.itm_logits_from(query_out), labels)
