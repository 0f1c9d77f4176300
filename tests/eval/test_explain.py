"""Saliency maps: occlusion against a one-image-at-a-time loop and a model whose answer is known;
Grad-CAM on cross-attention against per-pair, per-entry ``torch.autograd.grad`` by hand and a fake
fusion model (one cross-attention layer with ``Attention.cross`` semantics) whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coembed.eval.explain import (
    ExplainConfig,
    GradCamConfig,
    OcclusionConfig,
    explain,
    explain_texts,
    gradcam_maps,
    occlusion_map,
    occlusion_masks,
    patch_grid,
    peak_location,
    pick_method,
    window_starts,
)
from coembed.layers.attention import Attention
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig

PAD = 0


def tiny_dual_encoder(image_size: int = 16, patch: int = 4) -> DualEncoder:
    torch.manual_seed(0)
    cfg = DualEncoderConfig(embed_dim=16, vision=VisionConfig(image_size=image_size, patch_size=patch, width=32, layers=1, heads=2),
                            text=TextConfig(vocab_size=64, context_length=12, width=32, layers=1, heads=2))
    return DualEncoder(cfg).eval()


# --------------------------------------------------------------------------- occlusion
def naive_occlusion(model: nn.Module, image: torch.Tensor, tokens: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """One occluded image per forward pass; per-pixel sums and counts in Python loops."""
    text = F.normalize(model.encode_text(tokens), dim=-1)[0]
    cos = lambda img: float(F.normalize(model.encode_image(img[None]), dim=-1)[0] @ text)  # noqa: E731
    base = cos(image)
    H, W = image.shape[1:]
    total = [[0.0] * W for _ in range(H)]
    count = [[0] * W for _ in range(H)]
    top = stride - window  # windows hang over the edges by window - stride
    while top < H:
        left = stride - window
        while left < W:
            occluded = image.clone()
            occluded[:, max(0, top):top + window, max(0, left):left + window] = 0.0
            drop = base - cos(occluded)
            for y in range(max(0, top), min(H, top + window)):
                for x in range(max(0, left), min(W, left + window)):
                    total[y][x] += drop
                    count[y][x] += 1
            left += stride
        top += stride
    return torch.tensor([[total[y][x] / count[y][x] for x in range(W)] for y in range(H)])


@pytest.mark.parametrize("window,stride,batch", [(4, 2, 7), (5, 3, 100), (4, 4, 1), (16, 6, 64)])
def test_occlusion_matches_one_image_at_a_time(window: int, stride: int, batch: int) -> None:
    model = tiny_dual_encoder()
    torch.manual_seed(1)
    image = torch.randn(3, 16, 16)
    tokens = torch.tensor([[5, 9, 17, 3]])
    cfg = ExplainConfig(occlusion=OcclusionConfig(window=window, stride=stride, batch_size=batch))
    with torch.no_grad():
        got = explain(model, image, tokens, pad_id=PAD, cfg=cfg)
        want = naive_occlusion(model, image, tokens, window, stride)
    assert got.method == "occlusion"
    torch.testing.assert_close(got.heatmap, want, atol=1e-5, rtol=1e-4)
    assert got.heatmap.abs().max() > 1e-4  # the model does react to occlusion


def test_several_texts_equal_one_at_a_time() -> None:
    model = tiny_dual_encoder()
    image = torch.randn(3, 16, 16)
    tokens = torch.tensor([[5, 9, 17, 3], [7, 2, 0, 0]])
    cfg = ExplainConfig(occlusion=OcclusionConfig(window=4, stride=2))
    both = explain_texts(model, image, tokens, pad_id=PAD, cfg=cfg)
    first = explain(model, image, tokens[:1], pad_id=PAD, cfg=cfg)
    torch.testing.assert_close(both[0].heatmap, first.heatmap)
    assert not torch.allclose(both[0].heatmap, both[1].heatmap)


def test_windows_cover_every_pixel_equally_often() -> None:
    assert window_starts(16, 4, 4) == [0, 4, 8, 12]
    assert window_starts(16, 4, 2) == [-2, 0, 2, 4, 6, 8, 10, 12, 14]
    assert window_starts(16, 5, 3) == [-2, 1, 4, 7, 10, 13]
    with pytest.raises(ValueError, match="window"):
        window_starts(8, 9, 1)
    with pytest.raises(ValueError, match="stride"):
        window_starts(16, 4, 5)
    masks = occlusion_masks(16, 12, 4, 2)
    assert masks.shape == (9 * 7, 16, 12)
    assert masks.sum(0).eq(4).all()  # (4 / 2) ** 2 windows over every pixel, the border included
    assert masks.sum((1, 2)).max() == 16 and masks.sum((1, 2)).min() == 4  # clipped corner windows


class RegionModel(nn.Module):
    """Image embedding ``(s, 1)`` with ``s`` the sum of channel 0 over a fixed region; text ``(1, 0)``:
    the cosine grows with ``s``, so only occluding the region lowers it."""

    def __init__(self, top: int, left: int, size: int) -> None:
        super().__init__()
        self.box = (top, left, size)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        top, left, size = self.box
        s = images[:, 0, top:top + size, left:left + size].sum((1, 2))
        return F.normalize(torch.stack([s, torch.ones_like(s)], dim=1), dim=-1)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return torch.tensor([[1.0, 0.0]]).expand(tokens.shape[0], 2)


def test_occlusion_peaks_on_the_region_the_model_reads() -> None:
    model = RegionModel(top=9, left=3, size=4)
    image = torch.rand(3, 24, 24) * 0.1 + 0.05  # positive everywhere: occluding any region pixel lowers s
    cfg = ExplainConfig(occlusion=OcclusionConfig(window=4, stride=2))
    out = explain(model, image, torch.tensor([[1, 2]]), pad_id=PAD, cfg=cfg)
    x, y = out.peak
    assert 3 <= x <= 7 and 9 <= y <= 13
    # Pixels whose every covering window misses the region keep a zero drop.
    assert out.heatmap[:, 12:].abs().max() == 0 and out.heatmap[:6].abs().max() == 0
    assert out.heatmap[10, 4] > 0
    assert math.isclose(out.score, float(model.encode_image(image[None])[0, 0]), rel_tol=1e-6)


def test_occlusion_map_shapes_and_base() -> None:
    image = torch.ones(3, 8, 8)
    masks = occlusion_masks(8, 8, 4, 4)
    score_fn = lambda imgs: torch.stack([imgs.sum((1, 2, 3)), -imgs.sum((1, 2, 3))], 1)  # noqa: E731
    heat, base = occlusion_map(score_fn, image, masks, batch_size=3)
    assert heat.shape == (2, 8, 8) and base.tolist() == [192.0, -192.0]
    torch.testing.assert_close(heat[0], torch.full((8, 8), 48.0))  # each window removes 3 * 16 ones
    torch.testing.assert_close(heat[1], torch.full((8, 8), -48.0))


# --------------------------------------------------------------------------- fake fusion model
class FakeFusion(nn.Module):
    """Patch-embedded image tokens (with a class token) and embedded text tokens; one cross-attention
    layer with ``Attention.cross``'s parameters, its probabilities computed explicitly so they can be
    returned; the ITM head reads the text class token (position 0) after the residual."""

    def __init__(self, width: int = 8, heads: int = 2, patch: int = 4, vocab: int = 16) -> None:
        super().__init__()
        self.patch, self.heads = patch, heads
        self.patch_proj = nn.Linear(3 * patch * patch, width)
        self.cls = nn.Parameter(torch.randn(width))
        self.embed = nn.Embedding(vocab, width)
        self.cross = Attention(width, heads)
        self.head = nn.Linear(width, 2)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        B, p = images.shape[0], self.patch
        x = F.unfold(images, p, stride=p).transpose(1, 2)  # (B, grid*grid, 3*p*p)
        x = self.patch_proj(x)
        return torch.cat([self.cls.expand(B, 1, -1), x], dim=1)  # (B, 1 + grid*grid, width)

    def attend(self, query: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, Q, C = query.shape
        T, hd = context.shape[1], C // self.heads
        w_q, w_k, w_v = self.cross.in_proj_weight.split(C)
        b_q, b_k, b_v = self.cross.in_proj_bias.split(C)
        q = F.linear(query, w_q, b_q).view(B, Q, self.heads, hd).transpose(1, 2)  # (B, heads, Q, hd)
        k = F.linear(context, w_k, b_k).view(B, T, self.heads, hd).transpose(1, 2)  # (B, heads, T, hd)
        v = F.linear(context, w_v, b_v).view(B, T, self.heads, hd).transpose(1, 2)
        probs = (q @ k.transpose(-1, -2) / math.sqrt(hd)).softmax(-1)  # (B, heads, Q, T)
        y = (probs @ v).transpose(1, 2).reshape(B, Q, C)
        return self.cross.out_proj(y), probs

    def itm_logits(self, images: torch.Tensor, tokens: torch.Tensor, *, return_cross_attention: bool = False):
        text = self.embed(tokens)
        y, probs = self.attend(text, self.image_tokens(images))
        logits = self.head((text + y)[:, 0])
        return (logits, [probs]) if return_cross_attention else logits


def test_fake_fusion_attention_is_attention_cross() -> None:
    torch.manual_seed(0)
    model = FakeFusion()
    query, context = torch.randn(3, 5, 8), torch.randn(3, 7, 8)
    torch.testing.assert_close(model.attend(query, context)[0], model.cross.cross(query, context), atol=1e-6, rtol=1e-5)


def naive_gradcam(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor, pad: int, layer: int = 0) -> torch.Tensor:
    """Per pair, per head, per text token, per image token: the product of the attention entry and the
    positive part of d logit / d entry, summed in loops and averaged over heads and non-padding tokens."""
    out = []
    for b in range(images.shape[0]):
        logits, attns = model.itm_logits(images[b:b + 1], tokens[b:b + 1], return_cross_attention=True)
        attn = attns[layer]
        (grad,) = torch.autograd.grad(logits[0, 1], attn)
        attn = attn.detach()
        valid = [t for t in range(tokens.shape[1]) if int(tokens[b, t]) != pad]
        heads, T_img = attn.shape[1], attn.shape[3]
        cam = []
        for j in range(1, T_img):  # skip the image class token
            total = 0.0
            for h in range(heads):
                for t in valid:
                    total += float(attn[0, h, t, j]) * max(float(grad[0, h, t, j]), 0.0)
            cam.append(total / (heads * len(valid)))
        side = int(math.isqrt(len(cam)))
        out.append(torch.tensor(cam).view(side, side))
    return torch.stack(out)


def test_gradcam_matches_autograd_by_hand() -> None:
    torch.manual_seed(0)
    model = FakeFusion().eval()
    images = torch.randn(3, 3, 12, 12)
    tokens = torch.tensor([[1, 5, 7, 0], [2, 3, 0, 0], [4, 9, 11, 13]])
    got, logits = gradcam_maps(model, images, tokens, tokens != PAD)
    want = naive_gradcam(model, images, tokens, PAD)
    assert got.shape == (3, 3, 3)
    torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-4)
    assert got.abs().max() > 0
    torch.testing.assert_close(logits, model.itm_logits(images, tokens)[:, 1])


def known_fusion() -> FakeFusion:
    """Text queries score image tokens by brightness, values carry brightness, the matched logit is that
    value: attention and its gradient are both largest at the brightest patch."""
    model = FakeFusion(width=4, heads=1, patch=4)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.patch_proj.weight[0] = 1.0 / 48  # feature 0: the patch's mean brightness
        model.patch_proj.bias[1] = 1.0
        model.embed.weight[:, 0] = 4.0  # every text token asks for bright patches
        w = model.cross.in_proj_weight
        w[0:4] = torch.eye(4)  # queries
        w[4:8] = 4 * torch.eye(4)  # keys: sharper attention
        w[8:12] = torch.eye(4)  # values
        model.cross.out_proj.weight.copy_(torch.eye(4))
        model.head.weight[1, 0], model.head.weight[0, 0] = 1.0, -1.0
    return model.eval()


@pytest.mark.parametrize("row,col", [(0, 0), (1, 2), (2, 1)])
def test_gradcam_peaks_on_the_bright_patch(row: int, col: int) -> None:
    model = known_fusion()
    image = torch.zeros(3, 12, 12)
    image[:, 4 * row:4 * row + 4, 4 * col:4 * col + 4] = 1.0
    image[:, 4 * ((row + 1) % 3):4 * ((row + 1) % 3) + 4, 4 * col:4 * col + 4] = 0.3  # a dimmer distractor
    out = explain(model, image, torch.tensor([[3, 5, 0, 0]]), pad_id=PAD)
    assert out.method == "gradcam"
    assert out.peak == (4 * col + 2.0, 4 * row + 2.0)
    assert out.heatmap.shape == (12, 12)
    forced = explain(model, image, torch.tensor([[3, 5, 0, 0]]), pad_id=PAD,
                     cfg=ExplainConfig(method="occlusion", occlusion=OcclusionConfig(window=4, stride=4)))
    assert forced.method == "occlusion" and forced.peak == out.peak


def test_gradcam_averages_over_non_padding_tokens_only() -> None:
    torch.manual_seed(0)
    model = FakeFusion().eval()
    images = torch.randn(1, 3, 8, 8)
    short, padded = torch.tensor([[3, 5]]), torch.tensor([[3, 5, 0, 0, 0]])
    # Padding rows get a zero gradient here (the head reads position 0), so only the mean's divisor differs.
    a, _ = gradcam_maps(model, images, short, short != PAD)
    b, _ = gradcam_maps(model, images, padded, padded != PAD)
    torch.testing.assert_close(a, b)
    unmasked, _ = gradcam_maps(model, images, padded, torch.ones_like(padded, dtype=torch.bool))
    torch.testing.assert_close(unmasked * 5 / 2, a)


def test_gradcam_layer_choice_and_grid() -> None:
    model = FakeFusion().eval()
    images, tokens = torch.randn(1, 3, 8, 8), torch.tensor([[3, 5]])
    with pytest.raises(ValueError, match="layer"):
        gradcam_maps(model, images, tokens, tokens != PAD, layer=1)
    gradcam_maps(model, images, tokens, tokens != PAD, layer=-1)
    assert patch_grid(torch.arange(9.0)[None]).shape == (1, 3, 3)  # no class token
    assert patch_grid(torch.arange(10.0)[None])[0, 0, 0] == 1.0  # class token dropped
    with pytest.raises(ValueError, match="image tokens"):
        patch_grid(torch.zeros(1, 7))
    with pytest.raises(ValueError, match="layer"):
        GradCamConfig(layer="2")


def test_dispatch_and_config_errors() -> None:
    assert pick_method(tiny_dual_encoder()) == "occlusion"
    assert pick_method(FakeFusion()) == "gradcam"
    assert pick_method(FakeFusion(), "occlusion") == "occlusion"
    with pytest.raises(ValueError, match="gradcam.*fusion"):
        pick_method(tiny_dual_encoder(), "gradcam")
    with pytest.raises(ValueError, match="method"):
        ExplainConfig(method="lime")
    with pytest.raises(ValueError, match="stride"):
        OcclusionConfig(stride=0)
    with pytest.raises(ValueError, match="tokens"):
        explain(tiny_dual_encoder(), torch.zeros(3, 16, 16), torch.tensor([[1], [2]]), pad_id=PAD)


def test_peak_is_the_centre_of_the_maximal_plateau() -> None:
    heat = torch.zeros(8, 8)
    heat[2:4, 5:8] = 1.0
    assert peak_location(heat) == (6.5, 3.0)  # columns 5-7 span [5, 8), rows 2-3 span [2, 4)


def test_gradcam_on_the_albef_model_matches_autograd_by_hand() -> None:
    """The real fusion model (``coembed.models.fusion``, trailing padding trimmed inside the model)."""
    fusion = pytest.importorskip("coembed.models.fusion")
    torch.manual_seed(0)
    cfg = fusion.FusionConfig(embed_dim=16, vision=VisionConfig(image_size=16, patch_size=4, width=32, layers=1, heads=2),
                              text=fusion.FusionTextConfig(vocab_size=64, context_length=12, width=32, heads=2, layers=1,
                                                           fusion_layers=2), queue_size=8)
    model = fusion.FusionModel(cfg).eval()
    images = torch.randn(2, 3, 16, 16)
    tokens = torch.tensor([[1, 9, 17, 33, 2, 0, 0], [1, 40, 2, 0, 0, 0, 0]])
    for layer in (0, 1):
        got, _ = gradcam_maps(model, images, tokens, tokens != cfg.text.pad_id, layer=layer)
        want = naive_gradcam(model, images, tokens, cfg.text.pad_id, layer=layer)
        assert got.shape == (2, 4, 4) and got.abs().max() > 0
        torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-4)
    default, _ = gradcam_maps(model, images, tokens, tokens != cfg.text.pad_id)  # round(2 / 3) = the second layer
    torch.testing.assert_close(default, naive_gradcam(model, images, tokens, cfg.text.pad_id, layer=1), atol=1e-7, rtol=1e-4)
    out = explain(model, images[0], tokens[:1], pad_id=cfg.text.pad_id)
    assert out.method == "gradcam" and out.heatmap.shape == (16, 16)
