"""The caption decoders' shared text section: every bad field is a ValueError naming it, in both families."""

from __future__ import annotations

import pytest

from coembed.models.blip_captioner import BlipTextConfig
from coembed.models.coca import CocaTextConfig


@pytest.mark.parametrize("cls", [BlipTextConfig, CocaTextConfig])
@pytest.mark.parametrize(("fields", "message"), [
    ({"layers": 0}, "text.layers must be a positive int"),
    ({"vocab_size": 0, "pad_id": 0}, "text.vocab_size must be a positive int"),
    ({"context_length": 1}, "text.context_length must be >= 2"),
    ({"width": 30, "heads": 4}, r"text.width \(30\) must be divisible by text.heads \(4\)"),
    ({"mlp_ratio": 0.0}, "text.mlp_ratio must be positive"),
    ({"sot_id": 1024}, r"text.sot_id must be in \[0, vocab_size=1024\)"),
    ({"eot_id": -1}, "text.eot_id must be in"),
])
def test_bad_fields_are_named(cls, fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**fields)


def test_each_family_keeps_its_own_fields_and_defaults() -> None:
    assert (BlipTextConfig().layers, CocaTextConfig().layers) == (4, 2)
    assert BlipTextConfig().tie_embeddings and not hasattr(CocaTextConfig(), "tie_embeddings")
    with pytest.raises(ValueError, match="text.decoder_layers must be a positive int"):
        CocaTextConfig(decoder_layers=0)
