"""The text section shared by the captioning decoders (CoCa, :mod:`coembed.models.coca`; BLIP's decoder,
:mod:`coembed.models.blip_captioner`): shape, special token ids (set by the trainer from its tokenizer)
and their validation. Not a family: each decoder extends it with what only it has.
"""

from __future__ import annotations

from dataclasses import dataclass

from coembed.layers.transformer import check_text_shape

ID_FIELDS = ("pad_id", "sot_id", "eot_id")


@dataclass(kw_only=True)
class CaptionTextConfig:
    """A caption decoder's shape and token ids; every caption starts with ``sot_id`` and ends with ``eot_id``."""

    vocab_size: int = 1024
    context_length: int = 48
    width: int = 128
    heads: int = 2
    layers: int = 2
    mlp_ratio: float = 4.0
    pad_id: int = 0
    sot_id: int = 1
    eot_id: int = 2
    ln_eps: float = 1e-5

    # Fields a subclass adds that must be positive too (CoCa's decoder_layers).
    _positive = ("vocab_size", "width", "heads", "layers")

    def __post_init__(self) -> None:
        check_text_shape(self, self._positive, ID_FIELDS)
