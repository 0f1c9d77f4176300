"""A generative VQA answerer: BLIP's image-grounded decoder (:mod:`coembed.models.blip_captioner`)
reading ``<sot> question`` and continuing with ``answer <eot>``.

BLIP's VQA model encodes the question with an image-grounded encoder and decodes the answer from
those states with a separate decoder; here, as in the decoder-only answerers (SimVLM, PaLI, the LM
bridges), one causal decoder reads the question as a prompt and the loss covers the answer tokens only
(:func:`coembed.losses.vqa.answer_loss`, :mod:`coembed.objectives.blip_vqa`). Answers are decoded
greedily (:mod:`coembed.eval.vqa_answer`). The weights and shapes are the captioner's, so a ``blip``
captioning run warm-starts it (``init_from``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from coembed.models.blip_captioner import BlipCaptioner, BlipCaptionerConfig


@dataclass(kw_only=True)
class BlipVQAConfig(BlipCaptionerConfig):
    """The captioner's configuration plus the longest answer decoded."""

    max_answer_tokens: int = 8  # answer tokens generated at most (before <eot>)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.max_answer_tokens < self.text.context_length - 1:
            raise ValueError(f"max_answer_tokens must be in [1, text.context_length - 2 = {self.text.context_length - 2}], "
                             f"got {self.max_answer_tokens}")

    def to_dict(self) -> dict:
        return {"family": "blip_vqa", **asdict(self)}


class BlipVQA(BlipCaptioner):
    """BLIP's decoder as a question-prompted answer generator (same modules as :class:`BlipCaptioner`)."""

    config_class = BlipVQAConfig
    vqa_kind = "generative"  # coembed.eval.vqa_answer: answers by greedy decoding after the question
