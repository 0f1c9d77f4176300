"""init_from / warm_start: tensors under the prefixes are copied exactly from a saved checkpoint (a dual
encoder's image tower into an ALBEF model), momentum copies follow, everything else keeps its fresh
init, and shape or name mismatches are clear errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from coembed.errors import ConfigError
from coembed.loading import save
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.models.fusion import FusionConfig, FusionModel, FusionTextConfig
from coembed.tokenizer import Tokenizer
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig
from coembed.train.warm_start import warm_start

VISION = VisionConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2)


def dual_checkpoint(folder: Path, vision: VisionConfig = VISION) -> DualEncoder:
    torch.manual_seed(1)
    model = DualEncoder(DualEncoderConfig(embed_dim=16, vision=copy.deepcopy(vision),
                                          text=TextConfig(vocab_size=300, context_length=16, width=32, layers=1, heads=2)))
    save(folder, model, Tokenizer.train(["a red circle", "a blue square"] * 5, vocab_size=300))
    return model


def albef() -> FusionModel:
    torch.manual_seed(2)
    return FusionModel(FusionConfig(embed_dim=16, vision=copy.deepcopy(VISION), queue_size=4,
                                    text=FusionTextConfig(vocab_size=64, context_length=16, width=32, heads=2, layers=1, fusion_layers=1)))


def test_image_tower_is_copied_and_the_momentum_copy_follows(tmp_path: Path) -> None:
    dual = dual_checkpoint(tmp_path / "dual")
    model, fresh = albef(), albef()
    report = warm_start(model, tmp_path / "dual", ["visual."])
    assert report.copied and all(k.startswith("visual.") for k in report.copied)
    theirs, ours, untouched = dual.state_dict(), model.state_dict(), fresh.state_dict()
    for key in ours:
        if key.startswith("visual."):
            assert torch.equal(ours[key], theirs[key]), key
            assert torch.equal(ours[key.replace("visual.", "visual_m.", 1)], theirs[key]), key
        elif not key.startswith("visual_m."):
            assert torch.equal(ours[key], untouched[key]), key


def test_a_prefix_with_other_shapes_is_refused_by_name(tmp_path: Path) -> None:
    dual_checkpoint(tmp_path / "dual", VisionConfig(image_size=32, patch_size=8, width=64, layers=1, heads=2))
    with pytest.raises(ConfigError, match="visual.*differ in shape"):
        warm_start(albef(), tmp_path / "dual", ["visual."])


def test_nothing_matching_is_refused(tmp_path: Path) -> None:
    dual_checkpoint(tmp_path / "dual")
    with pytest.raises(ConfigError, match="no tensor"):
        warm_start(albef(), tmp_path / "dual", ["nothing."])


def test_without_prefixes_only_same_name_and_shape_is_copied(tmp_path: Path) -> None:
    dual_checkpoint(tmp_path / "dual")
    model = albef()
    report = warm_start(model, tmp_path / "dual")
    assert "logit_scale" in report.copied and any(k.startswith("visual.") for k in report.copied)
    assert any(k.startswith("transformer.") or k.startswith("token_embedding") for k in report.not_in_model)
