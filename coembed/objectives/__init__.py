"""Training objectives of the fusion families (ALBEF/BLIP, ViLT, VLMo), one module per family.

Models return features; the losses are the pure functions of :mod:`coembed.losses`. A family's
module combines the two in one function with this signature, which the trainer calls each step::

    def compute_losses(model, batch: FusionBatch, *, progress: float, weights: dict[str, float],
                       generator: torch.Generator) -> dict[str, torch.Tensor]

It returns the unweighted loss terms by name (``"itc"``, ``"itm"``, ``"mlm"``, ...); the trainer
multiplies each by ``weights[name]`` (1 when absent) and sums. ``progress`` is the share of training
done, in [0, 1] (ALBEF ramps its distillation weight with it); ``generator`` drives every random
choice (ITM negatives, MLM masks), so a seeded run is reproducible and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FusionBatch:
    """One training batch of a fusion family.

    Attributes:
        images: ``(B, 3, H, W)`` preprocessed images.
        tokens: ``(B, T)`` caption token ids (padded; the towers trim trailing padding).
        image_ids: ``(B,)`` dataset index of each image: pairs with equal ids show the same image.
        negatives: ``(B, T')`` one hard-negative caption per image from the manifest, or None.
        answer_scores: VQA training only (``task: vqa``, ``tokens`` are then the questions): ``(B, A)``
            the VQA accuracy each answer of the model's answer vocabulary would score, for models with
            one (``cfg.answers``); else None.
        qa_tokens: VQA training only: ``(B, T'')`` ``<sot> question answer <eot>`` rows for generative
            answerers; else None.
        answer_mask: ``(B, T'')`` True where ``qa_tokens`` holds an answer token or its ``<eot>`` (the
            only positions a generative answerer is scored on); None with ``qa_tokens``.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    image_ids: torch.Tensor
    negatives: torch.Tensor | None = None
    answer_scores: torch.Tensor | None = None
    qa_tokens: torch.Tensor | None = None
    answer_mask: torch.Tensor | None = None
