"""The text section shared by the captioning decoders (CoCa, :mod:`coembed.models.coca`; BLIP's decoder,
:mod:`coembed.models.blip_captioner`): shape, special token ids (set by the trainer from its tokenizer)
and their validation. Not a family: each decoder extends it with what only it has.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        for name in self._positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"text.{name} must be positive, got {getattr(self, name)}")
        if self.context_length < 2:
            raise ValueError(f"text.context_length must be >= 2 (room for <sot> and <eot>), got {self.context_length}")
        if self.width % self.heads:
            raise ValueError(f"text.width ({self.width}) must be divisible by text.heads ({self.heads})")
        if not self.mlp_ratio > 0:
            raise ValueError(f"text.mlp_ratio must be positive, got {self.mlp_ratio}")
        for name in ID_FIELDS:
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"text.{name} must be in [0, vocab_size={self.vocab_size}), got {getattr(self, name)}")
