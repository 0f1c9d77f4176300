"""FLIP patch dropout against a per-image reference that sorts the scores by hand."""

from __future__ import annotations

import pytest
import torch

from coembed.layers.patch_dropout import drop_patches, kept_patch_count, rank_patches


def _reference(tokens: torch.Tensor, prob: float, keep_first: bool, seed: int) -> torch.Tensor:
    """Draw the same scores, then per image keep the patches with the highest scores, best first."""
    torch.manual_seed(seed)
    patches = tokens[:, 1:] if keep_first else tokens
    scores = torch.randn(patches.shape[0], patches.shape[1])
    keep = kept_patch_count(patches.shape[1], prob)
    rows = []
    for b in range(patches.shape[0]):
        order = sorted(range(patches.shape[1]), key=lambda i: -scores[b, i].item())[:keep]
        kept = torch.stack([patches[b, i] for i in order])
        rows.append(torch.cat([tokens[b, :1], kept]) if keep_first else kept)
    return torch.stack(rows)


@pytest.mark.parametrize("keep_first", [True, False])
@pytest.mark.parametrize("prob", [0.25, 0.5, 0.75])
def test_matches_reference(prob: float, keep_first: bool) -> None:
    tokens = torch.randn(3, 1 + 16, 8)
    torch.manual_seed(7)
    got = drop_patches(tokens, prob, keep_first=keep_first)
    want = _reference(tokens, prob, keep_first, seed=7)
    patches = 16 if keep_first else 17
    assert got.shape == (3, int(keep_first) + kept_patch_count(patches, prob), 8)
    assert torch.equal(got, want)


def test_class_token_is_always_first_and_kept() -> None:
    tokens = torch.randn(4, 1 + 64, 8)
    out = drop_patches(tokens, 0.5, keep_first=True)
    assert out.shape == (4, 1 + 32, 8)
    assert torch.equal(out[:, 0], tokens[:, 0])
    # Every kept token is one of that image's own patches, none twice.
    for b in range(4):
        matches = (out[b, 1:, None, :] == tokens[b, None, 1:, :]).all(-1)
        assert matches.sum(1).eq(1).all() and matches.sum(0).le(1).all()


def test_subsets_differ_between_images_and_draws() -> None:
    tokens = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 16, 1).expand(2, 16, 4).contiguous()
    torch.manual_seed(0)
    a = drop_patches(tokens, 0.5, keep_first=False)
    b = drop_patches(tokens, 0.5, keep_first=False)
    kept = lambda x, i: set((x[i, :, 0] - 16 * i).tolist())  # noqa: E731
    assert kept(a, 0) != kept(a, 1) and kept(a, 0) != kept(b, 0)


def test_gradients_reach_only_the_kept_patches() -> None:
    tokens = torch.randn(2, 1 + 16, 4, requires_grad=True)
    drop_patches(tokens, 0.75, keep_first=True).sum().backward()
    used = tokens.grad.abs().sum(-1) > 0
    assert used[:, 0].all() and used[:, 1:].sum(1).tolist() == [4, 4]


def test_counts_and_limits() -> None:
    assert kept_patch_count(49, 0.5) == 24 and kept_patch_count(4, 0.9) == 1
    tokens = torch.randn(2, 5, 3)
    assert drop_patches(tokens, 0.0, keep_first=True) is tokens
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="patch dropout probability"):
            drop_patches(tokens, bad, keep_first=True)


def test_rank_patches_orders_by_score_and_follows_a_generator() -> None:
    torch.manual_seed(2)
    scores = torch.randn(3, 10)
    torch.manual_seed(2)
    order = rank_patches(3, 10)
    assert torch.equal(order[:, :4], scores.topk(4, dim=-1).indices)  # what OpenCLIP's top-k keeps
    assert torch.equal(order.sort(dim=-1).values, torch.arange(10).expand(3, 10))  # a permutation per image
    draw = lambda seed: rank_patches(3, 10, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(5), draw(5)) and not torch.equal(draw(5), draw(6))
