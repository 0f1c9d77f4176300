"""LLaVA: the prefix computation against a naive one, stage 1 / stage 2 trainable sets and updates,
tiling, training and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coembed.losses.captioning import caption_loss
from coembed.models.causal_lm import LMConfig
from coembed.models.llava import Llava, LlavaConfig
from coembed.objectives import FusionBatch
from coembed.objectives.bridge import compute_losses
from coembed.train.optim import build_optimizer
from tests.models.bridge_helpers import (
    TINY_LM, TINY_VISION, TRAIN_LM, TRAIN_VISION, check_trains_and_resumes_exactly, images, tokens_with_padding,
)


def llava(**overrides) -> Llava:
    torch.manual_seed(0)
    return Llava(LlavaConfig(vision=dict(TINY_VISION), lm=LMConfig(**TINY_LM), context_length=16, **overrides)).eval()


def test_logits_are_the_lm_over_projected_patches_then_the_caption() -> None:
    model = llava()
    tokens, pics = tokens_with_padding(), images()
    with torch.no_grad():
        patches = model.visual.forward_features(pics)[:, 1:]  # (B, 16, 32): class token dropped
        p = model.projector
        prefix = p[2](torch.nn.functional.gelu(p[0](patches)))
        # naive: the LM over [prefix; words] with padding hidden, read at the caption positions
        lm = model.lm
        x = torch.cat([prefix, lm.token_embedding(tokens)], dim=1)
        x = x + lm.positional_embedding[: x.shape[1]]
        real = torch.cat([torch.ones(3, 16, dtype=torch.bool), tokens != 0], dim=1)
        n = x.shape[1]
        mask = (torch.ones(n, n, dtype=torch.bool).tril() & real[:, None, :]) | torch.eye(n, dtype=torch.bool)
        for block in lm.transformer.resblocks:
            x = block(x, mask=mask[:, None])
        want = lm.ln_final(x) @ lm.token_embedding.weight.T
        assert torch.allclose(model(pics, tokens), want[:, 16:], atol=1e-5)


def test_projector_is_linear_gelu_linear_into_the_lm_width() -> None:
    model = llava(projector_hidden=24)
    kinds = [type(m).__name__ for m in model.projector]
    assert kinds == ["Linear", "GELU", "Linear"] and model.projector[0].in_features == 32
    assert (model.projector[0].out_features, model.projector[2].out_features) == (24, 32)


@pytest.mark.parametrize(("stage", "trains"), [(1, {"projector"}), (2, {"projector", "lm"})])
def test_stage_chooses_what_trains_and_a_step_changes_exactly_that(stage: int, trains: set[str]) -> None:
    model = llava(stage=stage)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == trains
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    batch = FusionBatch(images(), tokens_with_padding(), torch.arange(3))
    model.train()
    compute_losses(model, batch, progress=0.0, weights={}, generator=torch.Generator())["lm"].backward()
    optimizer.step()
    changed = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trains


def test_objective_is_the_caption_caption_loss() -> None:
    model = llava()
    tokens, pics = tokens_with_padding(), images()
    batch = FusionBatch(pics, tokens, torch.arange(3))
    with torch.no_grad():
        got = compute_losses(model, batch, progress=0.0, weights={}, generator=torch.Generator())["lm"]
        assert torch.allclose(got, caption_loss(model(pics, tokens), tokens, 0))


def test_tiling_feeds_pooled_global_view_and_tiles() -> None:
    model = llava(tiling=True, image_size=64, tile_grids=[[1, 1], [2, 2]], tile_pooled=2)
    pics = images(size=64)
    with torch.no_grad():
        tokens = model.visual_tokens(pics)
    assert tokens.shape == (3, 5 * 4, 32)  # (global + 2 x 2 tiles) x 2 x 2 pooled tokens
    from coembed.layers.tiling import global_view, pool_grid

    with torch.no_grad():
        view = model.visual.forward_features(global_view(pics, 32))[:, 1:]
        assert torch.allclose(tokens[:, :4], pool_grid(view, 2) + model.tiler.tile_position[0], atol=1e-5)
    from coembed.loading import default_preprocess

    assert default_preprocess(model).image_size == 64 and default_preprocess(llava()).image_size == 32


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="stage must be 1"):
        llava(stage=3)
    with pytest.raises(ValueError, match="tile_pooled must be in"):
        llava(tiling=True, tile_pooled=9)
    with pytest.raises(ValueError, match="16 image tokens \\+ context_length 30 exceed the LM's 40 positions"):
        Llava(LlavaConfig(vision=dict(TINY_VISION), lm=LMConfig(**TINY_LM), context_length=30))


def test_llava_tiny_trains_and_resumes_exactly(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    val = check_trains_and_resumes_exactly(shapes_data, tmp_path, monkeypatch, "llava-tiny", {**TRAIN_VISION, **TRAIN_LM, "stage": 2})
    assert 0 < val["val_caption_loss"] < 10


def test_pretrained_parts_are_read_and_a_saved_bridge_reloads_without_them(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    import coembed
    from coembed.checkpoint import read_tensors
    from coembed.loading import save
    from coembed.presets import create_model
    from tests.models.bridge_helpers import gpt2_folder

    pytest.importorskip("transformers")
    folder = gpt2_folder(tmp_path, positions=96)
    model = create_model("llava-tiny", vision_path=str(tiny_checkpoint), lm__path=str(folder), context_length=16)
    dual = read_tensors(tiny_checkpoint / "model.safetensors")
    assert model.cfg.vision.width == 64 and model.cfg.lm.kind == "hf"  # both read from their folders
    ours = model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in dual.items() if k.startswith("visual.") and k != "visual.proj")
    save(tmp_path / "bridge", model.eval(), None)
    shutil.rmtree(folder)
    loaded = coembed.load(tmp_path / "bridge").model
    pics, tokens = images(2, 64), tokens_with_padding(2)
    with torch.no_grad():
        assert torch.equal(loaded(pics, tokens), model(pics, tokens))


def test_trains_with_a_hugging_face_lm_and_its_tokenizer(shapes_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import json

    from coembed.train.loop import train
    from tests.models.bridge_helpers import add_word_tokenizer, gpt2_folder, train_settings

    folder = gpt2_folder(tmp_path, positions=96)
    add_word_tokenizer(folder)
    model = {**TRAIN_VISION, "lm.path": str(folder), "context_length": 24}
    result = train(train_settings(shapes_data, tmp_path / "run", "llava-tiny", model, max_steps=3))
    assert 0 < result.last_val["val_caption_loss"] < 10
    config = json.loads((tmp_path / "run" / "checkpoint" / "config.json").read_text())
    assert config["tokenizer"] == {"kind": "hf", "pad_id": 0} and config["model"]["lm"]["kind"] == "hf"
    saved = (tmp_path / "run" / "checkpoint" / "tokenizer.json").read_text()
    assert json.loads(saved)["model"]["vocab"] == json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
