"""The family registry that ``config.json``'s ``model.family`` is resolved through."""

from __future__ import annotations

import pytest
import torch

from coembed.models.dual_encoder import DualEncoder
from coembed.models.families import FAMILIES, build_model, context_length, model_class
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


@pytest.mark.parametrize(("preset", "where"), [("tiny", "text"), ("albef-tiny", "text"), ("vilt-tiny", "top"), ("vlmo-tiny", "top")])
def test_context_length_is_read_from_where_each_family_keeps_it(preset: str, where: str) -> None:
    # dual encoder and ALBEF keep it in cfg.text, ViLT and VLMo in cfg itself (the evaluation once
    # assumed text_cfg for every family and failed on ViLT)
    cfg = get_preset(preset)
    setattr(cfg.text if where == "text" else cfg, "context_length", 24)
    fields = cfg.to_dict()
    assert context_length(build_model(fields.pop("family"), fields)) == 24


def test_context_length_of_a_model_without_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="Linear's config has no context_length"):
        context_length(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(("preset", "family"), [("lm-tiny", "causal_lm"), ("qformer-tiny", "qformer"), ("flamingo-tiny", "flamingo"),
                                                ("llava-tiny", "llava")])
def test_bridge_families_round_trip_their_config(preset: str, family: str) -> None:
    from coembed.models.families import OBJECTIVES

    cfg = get_preset(preset)
    fields = cfg.to_dict()
    assert fields.pop("family") == family and family in OBJECTIVES
    model = build_model(family, fields)
    assert model.cfg == cfg and context_length(model) == cfg.context_length
