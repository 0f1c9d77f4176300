"""MAE: masking, an encoder that sees only the visible patches, the decoder's output, and names that
match a dual encoder's image tower."""

from __future__ import annotations

import pytest
import torch

import coembed
from coembed.losses.reconstruction import masked_patch_mse, patchify, unpatchify
from coembed.models.families import build_model, context_length
from coembed.models.mae import MAE, MAEConfig, random_masking
from coembed.presets import get_preset
from coembed.towers.vit import VisionConfig

VISION = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "stem": "patch"}  # 16 patches


def small(**kw) -> MAE:
    torch.manual_seed(0)
    return MAE(MAEConfig(vision=VisionConfig(**{**VISION, **kw.pop("vision", {})}), decoder_width=16, decoder_heads=2, **kw))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_output_shapes_and_target() -> None:
    model, images = small(), torch.randn(3, 3, 32, 32)
    out = model.forward_features(images, gen(0))
    assert out.pred.shape == out.target.shape == (3, 16, 8 * 8 * 3)
    assert out.mask.shape == (3, 16) and out.mask.dtype == torch.bool
    assert torch.equal(out.target, patchify(images, 8))


@pytest.mark.parametrize("ratio,kept", [(0.75, 4), (0.5, 8), (0.9, 1)])
def test_mask_ratio_is_exact_per_image(ratio: float, kept: int) -> None:
    m = random_masking(5, 16, ratio, generator=gen(1))
    assert m.mask.sum(1).tolist() == [16 - kept] * 5 and m.keep.shape == (5, kept)
    assert not m.mask.gather(1, m.keep).any()  # the kept patches are the unmasked ones
    order = torch.cat([m.keep, torch.stack([row.nonzero()[:, 0] for row in m.mask])], dim=1)  # (B, L) set, any order
    assert torch.equal(order.sort(1).values, torch.arange(16).expand(5, 16))
    shuffled = torch.arange(16).expand(5, 16).gather(1, m.restore.argsort(1))  # the visible-first order
    assert torch.equal(shuffled[:, :kept], m.keep)
    assert len({tuple(r.tolist()) for r in m.mask}) > 1  # images are masked differently


def test_encoder_sees_only_the_visible_quarter() -> None:
    model, seen = small(), []
    model.visual.transformer.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape))
    model.forward_features(torch.randn(2, 3, 32, 32), gen(0))
    assert seen == [torch.Size([2, 1 + 4, 32])]  # class token + 25% of 16 patches


def test_masked_pixels_do_not_reach_the_encoder() -> None:
    model, images = small(), torch.randn(2, 3, 32, 32)
    masking = model.random_masking(2, gen(3))
    changed = patchify(images, 8)
    changed[masking.mask] += 5.0  # every masked patch's pixels
    latent = model.forward_encoder(images, masking)
    assert torch.allclose(model.forward_encoder(unpatchify(changed, 8), masking), latent, atol=1e-6)
    changed[~masking.mask] += 5.0
    assert not torch.allclose(model.forward_encoder(unpatchify(changed, 8), masking), latent, atol=1e-3)


def test_class_token_free_tower() -> None:
    model = small(vision={"class_token": False, "pool": "map"})
    out = model.forward_features(torch.randn(2, 3, 32, 32), gen(0))
    assert out.pred.shape == (2, 16, 192) and out.mask.sum().item() == 2 * 12


def test_deterministic_under_a_generator() -> None:
    model, images = small(), torch.randn(2, 3, 32, 32)
    a, b = model.forward_features(images, gen(7)), model.forward_features(images, gen(7))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.pred, b.pred)
    c = model.forward_features(images, gen(8))
    assert not torch.equal(a.mask, c.mask)


def test_gradient_reaches_the_image_tower() -> None:
    model = small()
    out = model.forward_features(torch.randn(2, 3, 32, 32), gen(0))
    masked_patch_mse(out.pred, out.target, out.mask).backward()
    for name in ("visual.conv1.weight", "visual.positional_embedding", "visual.class_embedding",
                 "visual.transformer.resblocks.0.attn.in_proj_weight", "visual.ln_post.weight", "decoder.mask_token"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch() -> None:
    model, images = small(), torch.randn(8, 3, 32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(20):
        out = model.forward_features(images, gen(0))  # the same mask each step
        loss = masked_patch_mse(out.pred, out.target, out.mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_image_tower_names_and_shapes_match_the_dual_encoder() -> None:
    mae, dual = coembed.create_model("mae-tiny"), coembed.create_model("tiny", **{"vision.stem": "patch"})
    ours, theirs = mae.state_dict(), dual.state_dict()
    visual = [k for k in ours if k.startswith("visual.")]
    assert len(visual) > 50 and all(theirs[k].shape == ours[k].shape for k in visual)
    assert {k for k in theirs if k.startswith("visual.")} - set(visual) == {"visual.proj"}  # MAE trains no projection
    assert not any("pos_embed" in k for k in ours)  # the decoder's fixed positions are recomputed, not saved
    assert get_preset("mae-tiny").vision == get_preset("tiny-patch").vision


def test_config_round_trips_and_reads_no_text() -> None:
    cfg = get_preset("mae-tiny")
    fields = cfg.to_dict()
    assert fields.pop("family") == "mae"
    model = build_model("mae", fields)
    assert isinstance(model, MAE) and model.cfg == cfg and context_length(model) == 2


@pytest.mark.parametrize("kw,match", [
    ({"vision": {"stem": "conv"}}, "stem must be 'patch'"),
    ({"vision": {"patch_dropout": 0.5}}, "patch_dropout must be 0"),
    ({"mask_ratio": 0.0}, "mask_ratio"),
    ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"vision": {"image_size": 8}}, "mask at least one of the 1 patches"),  # one patch: always kept
    ({"decoder_width": 18}, "decoder_width"),
    ({"decoder_layers": 0}, "decoder_layers"),
])
def test_config_validation(kw: dict, match: str) -> None:
    vision = VisionConfig(**{**VISION, **kw.pop("vision", {})})
    with pytest.raises(ValueError, match=match):
        MAEConfig(vision=vision, **{"decoder_width": 16, **kw})


def test_the_smallest_mask_is_one_patch() -> None:
    assert MAEConfig(vision=VisionConfig(**VISION), decoder_width=16, mask_ratio=0.01).mask_ratio == 0.01  # 15 kept, 1 masked
