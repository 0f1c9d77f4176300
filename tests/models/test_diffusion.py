"""The diffusion family: noise schedules against diffusers and the closed form, the forward process against
its formula, block shapes, the frozen text tower against the dual encoder it is read from, the CFG null
condition and the cross-attention mask."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import coembed
from coembed.models.diffusion import (AttentionBlock, Diffusion, DiffusionConfig, ResBlock, alphas_cumprod, q_sample,
                                      timestep_embedding)
from coembed.presets import create_model

torch.set_num_threads(1)
SMALL = dict(image_size=16, channels=[16, 32], attention_levels=[1], heads=2, groups=4,
             text={"vocab_size": 64, "context_length": 12, "width": 32, "layers": 1, "heads": 2}, text_embed_dim=24)


def small(**overrides) -> Diffusion:
    torch.manual_seed(0)
    return Diffusion(DiffusionConfig(**{**SMALL, **overrides}))


def _random_outputs(model: Diffusion) -> None:
    # conv_out and each ResBlock's conv2 start at zero (identity blocks); randomise them so outputs depend on inputs
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.abs().sum():
                p.normal_(0, 0.05)


@pytest.mark.parametrize("schedule,diffusers_name", [("cosine", "squaredcos_cap_v2"), ("linear", "linear")])
def test_schedule_matches_diffusers(schedule: str, diffusers_name: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name, beta_start=1e-4, beta_end=0.02)
    ours = alphas_cumprod(schedule, 1000)
    torch.testing.assert_close(ours.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-6)


def test_cosine_schedule_is_the_closed_form_where_no_beta_is_clipped() -> None:
    # improved DDPM: alpha_bar_t = f(t) / f(0) with f(t) = cos(((t / T + s) / (1 + s)) pi / 2)^2 (the product telescopes)
    T, s = 1000, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = alphas_cumprod("cosine", T)
    for t in (0, 1, 10, 250, 500, 900, 990):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert abar[-1].item() < 1e-6 and abar[0].item() > 0.9999  # pure noise at the end, nearly clean at the start


def test_q_sample_is_the_forward_process_formula() -> None:
    abar = alphas_cumprod("cosine", 1000)
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 400, 999])
    out = q_sample(x0, t, noise, abar)
    for i in range(3):
        a = float(abar[t[i]])
        torch.testing.assert_close(out[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i])


def test_block_shapes() -> None:
    x, emb = torch.randn(2, 8, 6, 6), torch.randn(2, 20)
    assert ResBlock(8, 16, 20, 4, 0.0)(x, emb).shape == (2, 16, 6, 6)
    block = AttentionBlock(8, 12, 2, 4)
    assert block(x, torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.bool)).shape == (2, 8, 6, 6)
    assert timestep_embedding(torch.tensor([0, 999]), 16).shape == (2, 16)


@pytest.mark.parametrize("overrides", [{}, {"patch_size": 2}, {"channels": [16, 32, 32], "attention_levels": [0, 2], "res_blocks": 2}])
def test_forward_shape_and_every_level_used(overrides: dict) -> None:
    model = small(**overrides)
    _random_outputs(model)
    tokens = torch.tensor([[1, 7, 8, 2, 0], [1, 9, 2, 0, 0]])
    context, mask, pooled = model.condition(tokens)
    assert context.shape == (2, 4, 32) and mask.tolist() == [[True] * 4, [True, True, True, False]] and pooled.shape == (2, 24)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    out = model(x, torch.tensor([3, 700]), context, mask, pooled)
    assert out.shape == (2, 3, 16, 16)
    out.square().sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and not n.startswith("null_"))


def test_text_tower_is_frozen_and_pretrained_weights_are_those_of_the_dual_encoder(tiny_checkpoint: Path) -> None:
    dual, _, tokenizer = coembed.load(tiny_checkpoint)
    model = create_model("diffusion-tiny", text_path=str(tiny_checkpoint), channels=[16, 32], groups=4, heads=2)
    assert model.cfg.text == dual.cfg.text and model.cfg.text_embed_dim == dual.cfg.embed_dim
    assert not any(p.requires_grad for p in model.text.parameters())
    tokens = tokenizer(["a large red circle in the middle", "a small blue star on the left"], context_length=48)
    _, _, pooled = model.condition(tokens)
    torch.testing.assert_close(pooled, dual.encode_text(tokens))
    assert model.cfg.pretrained_tokenizer().encode("a red star") == tokenizer.encode("a red star")


def test_text_path_that_is_not_a_dual_encoder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="text_path"):
        create_model("diffusion-tiny", text_path=str(tmp_path / "missing"))


def test_dropped_rows_get_the_null_condition() -> None:
    model = small()
    tokens = torch.tensor([[1, 7, 8, 2], [1, 9, 5, 2]])
    context, mask, pooled = model.condition(tokens, torch.tensor([False, True]))
    full, full_mask, full_pooled = model.condition(tokens)
    torch.testing.assert_close(context[0], full[0])
    torch.testing.assert_close(context[1, 0], model.null_token)
    assert mask[1].tolist() == [True, False, False, False] and mask[0].all()
    torch.testing.assert_close(pooled[1], model.null_pooled)
    torch.testing.assert_close(pooled[0], full_pooled[0])


def test_masked_context_positions_do_not_change_the_prediction() -> None:
    model = small().eval()
    _random_outputs(model)
    context, mask, pooled = torch.randn(1, 4, 32), torch.tensor([[True, True, False, False]]), torch.randn(1, 24)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    other = context.clone()
    other[:, 2:] = torch.randn(1, 2, 32)
    torch.testing.assert_close(model(x, t, context, mask, pooled), model(x, t, other, mask, pooled))
    other[:, 1] += 1.0  # an attended position does
    assert not torch.allclose(model(x, t, context, mask, pooled), model(x, t, other, mask, pooled))


def test_to_pixels_undoes_the_preprocess() -> None:
    from coembed.transforms import ImageTransform

    pixels = torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8)
    images = ImageTransform(16).normalize(pixels)[None]
    expected = pixels.float().permute(2, 0, 1)[None] / 255 * 2 - 1
    torch.testing.assert_close(small().to_pixels(images), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("field,value", [("channels", [16, 30]), ("image_size", 17), ("attention_levels", [3]), ("schedule", "quad"),
                                         ("cond_dropout", 1.0), ("patch_size", 0), ("timesteps", True), ("snr_gamma", -1.0),
                                         ("snr_gamma", float("inf")), ("snr_gamma", "5")])
def test_bad_config_names_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        DiffusionConfig(**{**SMALL, field: value})


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    from coembed.tokenizer import Tokenizer

    model = small()
    tokenizer = Tokenizer.train(["a red circle", "a blue star"] * 20, vocab_size=300)
    coembed.save(tmp_path / "ck", model, tokenizer)
    loaded = coembed.load(tmp_path / "ck").model
    assert isinstance(loaded, Diffusion) and loaded.cfg == model.cfg
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
