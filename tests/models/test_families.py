"""The family registry that ``config.json``'s ``model.family`` is resolved through."""

from __future__ import annotations

import pytest

from coembed.models.dual_encoder import DualEncoder
from coembed.models.families import FAMILIES, build_model, model_class
from coembed.presets import get_preset


def test_every_family_imports_and_carries_its_config_class() -> None:
    for family in FAMILIES:
        cls = model_class(family)
        assert hasattr(cls, "config_class"), family


def test_build_model_round_trips_a_config_dict() -> None:
    cfg = get_preset("tiny")
    fields = cfg.to_dict()
    assert fields.pop("family") == "dual_encoder"
    model = build_model("dual_encoder", fields)
    assert isinstance(model, DualEncoder) and model.cfg == cfg


def test_unknown_family_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model family 'gpt'; known: .*dual_encoder"):
        model_class("gpt")
