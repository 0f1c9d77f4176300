"""Where a text matches an image: saliency maps for dual encoders and fusion models.

Two methods, both returning a heat map on the model's input grid (higher = the region supports the
match more):

- **Occlusion** (any model with an image-text score; the default for dual encoders): slide a
  ``window x window`` occluder with ``stride`` over the image, re-embed all occluded copies in
  batches and record how much the score drops; each pixel gets the mean drop of the windows covering
  it. The occluder is the dataset mean, i.e. zeros after normalisation: the one input value that
  carries no colour and no edges in the model's input space. A blur would keep an object's colour
  (a 8 px blur of a 12 px red disc is still a red blob), so colour words would survive occlusion.
- **Grad-CAM on cross-attention** (fusion models exposing ``itm_logits``; ALBEF's grounding, its
  ``Grounding.py``): the cross-attention probabilities of one fusion layer times the positive part of
  their gradient w.r.t. the matched ITM logit, averaged over heads and the text's non-padding tokens;
  the image class-token column is dropped and the rest reshaped to the patch grid.

:func:`explain` dispatches: a model with ``itm_logits`` gets Grad-CAM, any other occlusion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coembed.models.families import context_length

METHODS = ("gradcam", "occlusion")
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(kw_only=True)
class OcclusionConfig:
    """Occlusion sliding window.

    Attributes:
        window: occluder side in pixels; None: a quarter of the image side.
        stride: step between windows in pixels; None: half the window.
        batch_size: occluded images embedded per forward pass.
    """

    window: int | None = None
    stride: int | None = None
    batch_size: int = 128

    def __post_init__(self) -> None:
        for name in ("window", "stride", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(kw_only=True)
class GradCamConfig:
    """Grad-CAM on cross-attention.

    Attributes:
        layer: index of the fusion layer whose cross-attention is explained (negative counts from the
            end); None: layer ``round(n / 3)`` of ``n``, ALBEF's choice for its six (block 8 = index 2),
            which is the second of two: on `shapes` an `albef-minilm` model's peaks hit the named object
            0.852 of the time from its second fusion layer against 0.784 from its first (docs/benchmarks.md).
    """

    layer: int | None = None

    def __post_init__(self) -> None:
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int)):
            raise ValueError(f"layer must be an integer, got {self.layer!r}")


@dataclass(kw_only=True)
class ExplainConfig:
    """Which method and its settings; ``method`` None picks by model (see :func:`pick_method`)."""

    method: str | None = None
    occlusion: OcclusionConfig = field(default_factory=OcclusionConfig)
    gradcam: GradCamConfig = field(default_factory=GradCamConfig)

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")


@dataclass
class Explanation:
    """One heat map.

    Attributes:
        method: ``"gradcam"`` or ``"occlusion"``.
        heatmap: ``(H, W)`` float map at the input image resolution.
        peak: ``(x, y)`` of the map's maximum in pixels (continuous coordinates: pixel ``i`` spans
            ``[i, i + 1)``), the centre of the plateau of maximal pixels.
        score: the unoccluded score: cosine similarity (dual encoder) or the matched ITM logit.
    """

    method: str
    heatmap: torch.Tensor
    peak: tuple[float, float]
    score: float


# --------------------------------------------------------------------------- occlusion
def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis, every ``stride`` pixels from ``stride - window`` on.

    The first and last windows hang over the edges (they are clipped to the image), so every pixel is
    covered by the same number of windows (``window / stride`` when ``stride`` divides ``window``).
    Without that, edge pixels lie under a single window, their mean drop is that one window's, and
    the peak is drawn to the border (on `shapes`, 16 / 8 px: 0.790 -> 0.885 hits, docs/benchmarks.md).
    """
    if window > size:
        raise ValueError(f"window ({window}) must not exceed the image side ({size})")
    if stride > window:
        raise ValueError(f"stride ({stride}) must not exceed the window ({window}), or pixels between windows are never occluded")
    return list(range(stride - window, size, stride))


def occlusion_masks(height: int, width: int, window: int, stride: int) -> torch.Tensor:
    """Boolean masks ``(N, H, W)`` of all window positions (clipped to the image), row-major over (top, left)."""
    rows = _axis_masks(height, window, stride)  # (n_rows, H)
    cols = _axis_masks(width, window, stride)  # (n_cols, W)
    masks = rows[:, None, :, None] & cols[None, :, None, :]  # (n_rows, n_cols, H, W)
    return masks.flatten(0, 1)  # (N, H, W)


def _axis_masks(size: int, window: int, stride: int) -> torch.Tensor:
    starts = torch.tensor(window_starts(size, window, stride))
    pos = torch.arange(size)
    return (pos[None] >= starts[:, None]) & (pos[None] < starts[:, None] + window)  # (n, size)


def occlusion_map(score_fn: ScoreFn, image: torch.Tensor, masks: torch.Tensor, *, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean score drop per pixel when the windows covering it are occluded with zeros.

    Args:
        score_fn: normalised images ``(N, 3, H, W)`` -> scores ``(N, K)`` (one column per text).
        image: one normalised image ``(3, H, W)``.
        masks: ``(N, H, W)`` windows from :func:`occlusion_masks`.
        batch_size: occluded images per ``score_fn`` call.

    Returns:
        ``(heat (K, H, W), base (K,))``: the drops averaged over covering windows, and the unoccluded scores.
    """
    base = score_fn(image[None])[0]  # (K,)
    heat = image.new_zeros(base.shape[0], *masks.shape[1:])  # (K, H, W)
    for start in range(0, masks.shape[0], batch_size):
        chunk = masks[start:start + batch_size]  # (n, H, W)
        occluded = image[None] * ~chunk[:, None]  # (n, 3, H, W): zero = the normalised mean colour
        drops = base[None] - score_fn(occluded)  # (n, K)
        heat += torch.einsum("nk,nhw->khw", drops, chunk.to(heat.dtype))
    coverage = masks.sum(0).clamp(min=1)  # (H, W)
    return heat / coverage, base


def cosine_score_fn(model: nn.Module, tokens: torch.Tensor) -> ScoreFn:
    """Scores ``(N, K)``: cosine similarity of each image to each of the ``K`` texts."""
    text = model.encode_text(tokens, normalize=True)  # (K, D)
    return lambda images: model.encode_image(images, normalize=True) @ text.T


def itm_score_fn(model: nn.Module, tokens: torch.Tensor) -> ScoreFn:
    """Scores ``(N, K)``: the matched ITM logit of each image with each of the ``K`` texts."""

    def score(images: torch.Tensor) -> torch.Tensor:
        n, k = images.shape[0], tokens.shape[0]
        pairs_img = images.repeat_interleave(k, dim=0)  # (n*K, 3, H, W)
        pairs_txt = tokens.repeat(n, 1)  # (n*K, T)
        return model.itm_logits(pairs_img, pairs_txt)[:, 1].view(n, k)  # (n, K)

    return score


def default_window(image_size: int) -> int:
    """A quarter of the image side: on 64 px `shapes` (objects 12-22 px across) 16 px windows find the
    named object far more often than one 8 px ViT patch (docs/benchmarks.md, "Explanations")."""
    return max(1, image_size // 4)


# --------------------------------------------------------------------------- Grad-CAM
def gradcam_maps(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor, text_mask: torch.Tensor,
                 *, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ALBEF's Grad-CAM of the matched ITM logit on one fusion layer's cross-attention.

    Args:
        model: a fusion model with ``itm_logits(images, tokens, *, return_cross_attention=True)``.
        images: normalised images ``(B, 3, H, W)``.
        tokens: token ids ``(B, T)``, pair ``b`` is ``(images[b], tokens[b])``.
        text_mask: ``(B, T)`` true at non-padding tokens.
        layer: fusion layer index (see :class:`GradCamConfig`).

    Returns:
        ``(cams (B, grid, grid), logits (B,))``: the maps on the patch grid and the matched ITM logits.
    """
    with torch.enable_grad():
        logits, attns = model.itm_logits(images, tokens, return_cross_attention=True)
        attn = attns[_layer_index(layer, len(attns))]  # (B, heads, T_text, T_image)
        (grad,) = torch.autograd.grad(logits[:, 1].sum(), attn)
    cam = (attn.detach() * grad.clamp(min=0)).mean(1)  # (B, T_text, T_image)
    mask = text_mask[:, : cam.shape[1]].to(cam.dtype)  # (B, T_text): the model may trim trailing padding
    cam = (cam * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, T_image)
    return patch_grid(cam), logits[:, 1].detach()


def _layer_index(layer: int | None, n: int) -> int:
    if n == 0:
        raise ValueError("the model returned no cross-attention layers")
    index = round(n / 3) if layer is None else layer
    if not -n <= index < n:
        raise ValueError(f"layer must be in [{-n}, {n - 1}] for a model with {n} fusion layers, got {layer}")
    return index % n


def patch_grid(cam: torch.Tensor) -> torch.Tensor:
    """``(B, T_image)`` -> ``(B, grid, grid)``, dropping the class-token column when ``T_image = grid^2 + 1``."""
    tokens = cam.shape[1]
    side = round(tokens**0.5)
    if side * side != tokens:
        side = round((tokens - 1) ** 0.5)
        if side * side != tokens - 1:
            raise ValueError(f"{tokens} image tokens are neither a square patch grid nor one plus a square")
        cam = cam[:, 1:]  # drop the image class token
    return cam.reshape(cam.shape[0], side, side)  # (B, grid, grid)


# --------------------------------------------------------------------------- peak, dispatch
def peak_location(heatmap: torch.Tensor) -> tuple[float, float]:
    """``(x, y)`` centre of the pixels equal to the maximum of ``heatmap (H, W)``, in continuous pixel coordinates."""
    ys, xs = torch.nonzero(heatmap == heatmap.max(), as_tuple=True)
    return float(xs.double().mean()) + 0.5, float(ys.double().mean()) + 0.5


def pick_method(model: nn.Module, method: str | None = None) -> str:
    """``method`` if given (checked against the model), else Grad-CAM for fusion models and occlusion otherwise."""
    is_fusion = callable(getattr(model, "itm_logits", None))
    if method is None:
        return "gradcam" if is_fusion else "occlusion"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "gradcam" and not is_fusion:
        raise ValueError("method 'gradcam' needs a fusion model (one with itm_logits); use 'occlusion' for a dual encoder")
    return method


def upsample(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, g, g)`` patch maps -> ``(B, H, W)``, each patch's value repeated over its pixels."""
    return F.interpolate(grid[:, None], size=(height, width), mode="nearest")[:, 0]  # (B, H, W)


@torch.no_grad()
def explain_texts(model: nn.Module, image: torch.Tensor, tokens: torch.Tensor, *, pad_id: int,
                  cfg: ExplainConfig | None = None) -> list[Explanation]:
    """One heat map per text for one image.

    Args:
        model: a dual encoder (``encode_image`` / ``encode_text``) or a fusion model (``itm_logits``).
        image: one normalised image ``(3, H, W)``.
        tokens: token ids ``(K, T)`` of the ``K`` texts.
        pad_id: the tokenizer's padding id (Grad-CAM averages over the other tokens).
        cfg: method and settings.
    """
    cfg = cfg or ExplainConfig()
    method = pick_method(model, cfg.method)
    height, width = image.shape[-2:]
    if method == "gradcam":
        images = image[None].expand(tokens.shape[0], -1, -1, -1)  # (K, 3, H, W)
        grids, scores = gradcam_maps(model, images, tokens, tokens != pad_id, layer=cfg.gradcam.layer)
        heat = upsample(grids, height, width)  # (K, H, W)
    else:
        heat, scores = _occlusion(model, image, tokens, cfg.occlusion)
    return [Explanation(method=method, heatmap=h, peak=peak_location(h), score=float(s)) for h, s in zip(heat, scores)]


def _occlusion(model: nn.Module, image: torch.Tensor, tokens: torch.Tensor, cfg: OcclusionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    height, width = image.shape[-2:]
    window = cfg.window or default_window(min(height, width))
    stride = cfg.stride or max(1, window // 2)
    masks = occlusion_masks(height, width, window, stride)  # (N, H, W)
    is_fusion = callable(getattr(model, "itm_logits", None))
    score_fn = itm_score_fn(model, tokens) if is_fusion else cosine_score_fn(model, tokens)
    return occlusion_map(score_fn, image, masks, batch_size=cfg.batch_size)


def explain(model: nn.Module, image: torch.Tensor, tokens: torch.Tensor, *, pad_id: int,
            cfg: ExplainConfig | None = None) -> Explanation:
    """The heat map of one text ``tokens (1, T)`` on one image ``(3, H, W)`` (see :func:`explain_texts`)."""
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must be (1, T) for one text, got {tuple(tokens.shape)}")
    return explain_texts(model, image, tokens, pad_id=pad_id, cfg=cfg)[0]


def explain_image(model: nn.Module, preprocess: Any, tokenizer: Any, image: Any, text: str,
                  cfg: ExplainConfig | None = None) -> tuple[Explanation, np.ndarray]:
    """Explain ``text`` on a PIL ``image``: the heat map and the ``(H, W, 3)`` uint8 pixels it lies on.

    Args:
        model: a loaded model (:func:`coembed.load`).
        preprocess: its :class:`~coembed.transforms.ImageTransform`.
        tokenizer: its tokenizer (``__call__(texts, context_length)`` and ``pad_id``).
        image: a PIL image, resized and cropped by ``preprocess`` first.
        text: the non-empty text to locate.
        cfg: method and settings.
    """
    if not text.strip():
        raise ValueError("text is empty")
    device = next(model.parameters()).device
    pixels = preprocess.pixels(image)  # (H, W, 3) uint8
    tensor = preprocess.normalize(torch.from_numpy(pixels)).to(device)  # (3, H, W)
    tokens = tokenizer([text], context_length=context_length(model)).to(device)  # (1, T)
    out = explain(model, tensor, tokens, pad_id=int(tokenizer.pad_id), cfg=cfg)
    return Explanation(method=out.method, heatmap=out.heatmap.float().cpu(), peak=out.peak, score=out.score), pixels
