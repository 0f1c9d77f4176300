"""MAE's pixel patches and masked reconstruction loss against MAE's own layout and a per-patch loop."""

from __future__ import annotations

import pytest
import torch

from coembed.losses.reconstruction import masked_patch_mse, normalize_patches, patchify, unpatchify


def mae_patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """The layout of MAE's ``MaskedAutoencoderViT.patchify`` (facebookresearch/mae): 'nchpwq->nhwpqc'."""
    n, _, h, _ = images.shape
    x = images.reshape(n, 3, h // p, p, h // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) ** 2, p * p * 3)


def loop_patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """Patch (r, c) in row-major order; inside it pixel rows, then columns, then the channels."""
    b, _, h, w = images.shape
    rows = [[images[i, :, r : r + p, c : c + p].permute(1, 2, 0).reshape(-1) for r in range(0, h, p) for c in range(0, w, p)]
            for i in range(b)]
    return torch.stack([torch.stack(r) for r in rows])


def loop_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool) -> float:
    """MAE's loss one patch at a time: normalise the patch (unbiased variance + 1e-6), mean squared
    error over its values, averaged over the masked patches."""
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for l in range(pred.shape[1]):
            if not mask[b, l]:
                continue
            t = target[b, l].double()
            if norm_pix:
                mean = t.sum() / len(t)
                var = ((t - mean) ** 2).sum() / (len(t) - 1)
                t = (t - mean) / (var + 1e-6) ** 0.5
            total += ((pred[b, l].double() - t) ** 2).mean().item()
            count += 1
    return total / count


def test_patchify_matches_mae_and_a_loop() -> None:
    images = torch.randn(2, 3, 16, 16)
    got = patchify(images, 4)
    assert got.shape == (2, 16, 48)
    assert torch.equal(got, mae_patchify(images, 4))
    assert torch.equal(got, loop_patchify(images, 4))


def test_patchify_puts_one_pixel_where_expected() -> None:
    images = torch.zeros(1, 3, 8, 8)
    images[0, 2, 5, 1] = 1.0  # channel 2, row 5, column 1: patch (1, 0), pixel (1, 1) inside it
    (index,) = patchify(images, 4)[0].flatten().nonzero()[:, 0].tolist()
    assert divmod(index, 48) == (2 * 1 + 0, (1 * 4 + 1) * 3 + 2)


@pytest.mark.parametrize("shape,grid", [((3, 3, 32, 32), None), ((2, 3, 16, 24), (2, 3)), ((1, 1, 8, 8), None)])
def test_unpatchify_inverts_patchify(shape: tuple, grid: tuple | None) -> None:
    images = torch.randn(*shape)
    assert torch.equal(unpatchify(patchify(images, 8), 8, grid), images)


def test_patchify_and_unpatchify_refuse_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="multiple of patch_size"):
        patchify(torch.zeros(1, 3, 10, 10), 4)
    with pytest.raises(ValueError, match="grid"):
        unpatchify(torch.zeros(1, 5, 48), 4)
    with pytest.raises(ValueError, match="whole 4x4 patches"):
        unpatchify(torch.zeros(1, 4, 50), 4)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_masked_patch_mse_equals_the_loop(norm_pix: bool) -> None:
    torch.manual_seed(0)
    pred, target = torch.randn(3, 16, 12), 3 * torch.rand(3, 16, 12) + 1
    mask = torch.rand(3, 16) < 0.75
    got = masked_patch_mse(pred, target, mask, norm_pix=norm_pix)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(loop_loss(pred, target, mask, norm_pix), rel=1e-5)


def test_only_masked_patches_count() -> None:
    torch.manual_seed(1)
    pred, target = torch.randn(2, 8, 6), torch.randn(2, 8, 6)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :6] = True
    base = masked_patch_mse(pred, target, mask)
    visible = pred.clone()
    visible[:, 6:] += 10.0
    assert torch.equal(masked_patch_mse(visible, target, mask), base)
    hidden = pred.clone()
    hidden[:, 0] += 1.0
    assert masked_patch_mse(hidden, target, mask) > base
    assert masked_patch_mse(normalize_patches(target), target, mask).item() == pytest.approx(0.0, abs=1e-10)


def test_normalised_patches_have_zero_mean_and_unit_unbiased_variance() -> None:
    patches = normalize_patches(5 * torch.rand(4, 7, 48) - 2)
    assert torch.allclose(patches.mean(-1), torch.zeros(4, 7), atol=1e-5)
    assert torch.allclose(patches.var(-1), torch.ones(4, 7), atol=1e-4)
    flat = normalize_patches(torch.full((1, 1, 12), 3.0))  # a constant patch: eps keeps it finite
    assert torch.equal(flat, torch.zeros(1, 1, 12))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        masked_patch_mse(torch.zeros(1, 4, 3), torch.zeros(1, 4, 2), torch.ones(1, 4))
    with pytest.raises(ValueError, match="no patch"):
        masked_patch_mse(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), torch.zeros(1, 4))
