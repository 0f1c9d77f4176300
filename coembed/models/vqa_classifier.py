"""A VQA answer classifier on ALBEF's fusion encoder (Li et al., 2021; the classifier head as ViLT's).

The question is the text: the text encoder reads it, the fusion layers cross-attend to the image
tokens, and an MLP on the fused first (``<sot>``/[CLS]) token scores every answer of a closed answer
vocabulary (``cfg.answers``, built by the trainer from the training answers and stored in the config,
so a checkpoint answers on its own). The head is ViLT's VQA head: Linear(W, 2W), LayerNorm, GELU,
Linear(2W, A). ALBEF itself answers generatively with a decoder; the classifier is the ViLT / LXMERT /
BUTD formulation, trained by soft-score BCE (:func:`coembed.losses.vqa.soft_score_bce`).

Everything else (towers, fusion layers, ITC/ITM/MLM heads and momentum copies) is
:class:`~coembed.models.fusion.FusionModel`'s, so an ``albef`` run warm-starts it (``init_from``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from coembed.models.fusion import FusionConfig, FusionModel


@dataclass(kw_only=True)
class VQAClassifierConfig(FusionConfig):
    """ALBEF's configuration plus the answer vocabulary and the head's hidden-width ratio."""

    # The closed answer vocabulary (normalised answers, see coembed.eval.vqa.normalize_answer); empty in
    # the preset: `coembed train --set task=vqa` fills it from the training answers.
    answers: tuple[str, ...] = ()
    head_ratio: float = 2.0  # hidden width of the answer MLP over the text width (ViLT: 2)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.answers, str) or not all(isinstance(a, str) and a for a in self.answers):
            raise ValueError(f"answers must be a list of non-empty strings, got {self.answers!r:.80}")
        self.answers = tuple(self.answers)  # JSON and overrides give a list
        if len(set(self.answers)) != len(self.answers):
            raise ValueError("answers must not repeat an answer")
        if not self.head_ratio > 0:
            raise ValueError(f"head_ratio must be positive, got {self.head_ratio}")

    def to_dict(self) -> dict:
        return {"family": "vqa_classifier", **asdict(self)}


class VQAClassifier(FusionModel):
    """ALBEF's fusion model with an answer head on the fused first token.

    Args:
        cfg: model configuration; ``cfg.answers`` must be non-empty.

    Raises:
        ValueError: ``cfg.answers`` is empty.
    """

    config_class = VQAClassifierConfig
    vqa_kind = "classifier"  # coembed.eval.vqa_answer: answers by argmax over cfg.answers

    def __init__(self, cfg: VQAClassifierConfig) -> None:
        if not cfg.answers:
            raise ValueError("answers is empty: a vqa_classifier needs its answer vocabulary (train with task: vqa, "
                             "which sets it from the training answers, or set model.answers)")
        super().__init__(cfg)
        width = cfg.text.width
        hidden = max(1, round(width * cfg.head_ratio))
        self.answer_head = nn.Sequential(nn.Linear(width, hidden), nn.LayerNorm(hidden, eps=cfg.text.ln_eps), nn.GELU(),
                                         nn.Linear(hidden, len(cfg.answers)))

    def answer_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images and (B, T) question ids -> (B, A) answer logits, A = ``len(cfg.answers)``."""
        hidden, mask = self.encode_text_tokens(tokens)  # (B, T', W), (B, T')
        fused = self.fuse(hidden, mask, self.image_tokens(images))  # (B, T', W)
        return self.answer_head(fused[:, 0])
