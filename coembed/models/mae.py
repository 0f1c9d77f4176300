"""Masked autoencoder (MAE, He et al., 2022): self-supervised pre-training of the ViT image tower.

Each image loses a random ``mask_ratio`` of its patches (75%); the encoder, ``visual``, runs on the
visible rest only, so a step costs a quarter of the encoder's full-image work. A lightweight decoder
(its own width, depth and fixed sine-cosine positions) puts a learned mask token at every masked
position, restores the patch order and predicts the pixels of every patch; the loss
(:func:`coembed.losses.reconstruction.masked_patch_mse`) counts the masked ones.

``visual`` is the dual encoder's own :class:`~coembed.towers.vit.VisionTransformer` with the same
config type, so its ``visual.*`` tensors have the names and shapes of a dual encoder with that
vision config: ``init_from`` with ``init_prefixes: ["visual."]`` starts a contrastive run from them.
MAE trains no projection into a shared space, so the tower is built without ``proj`` (a warm-started
dual encoder keeps its own fresh one) and its pooling is unused. The tower must have the patch stem
(``vision.stem = "patch"``, MAE's): the conv stem embeds the whole image before masking, and its 3x3
convolutions carry pixels of the neighbouring (masked) patches into every visible token. A
contrastive run warm-started from an MAE therefore needs ``model.vision.stem=patch`` too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from coembed.layers.patch_dropout import kept_patch_count, rank_patches
from coembed.layers.pos_embed import sincos_2d
from coembed.layers.transformer import Transformer
from coembed.losses.reconstruction import patchify
from coembed.towers.vit import VisionConfig, VisionTransformer


@dataclass(kw_only=True)
class MAEConfig:
    """An MAE: the image tower to pre-train, the masking and the decoder's shape."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    mask_ratio: float = 0.75
    decoder_width: int = 64
    decoder_layers: int = 1
    decoder_heads: int = 2
    decoder_mlp_ratio: float = 4.0
    norm_pix_loss: bool = True  # targets are each patch's normalised pixels (MAE's better variant)

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if not isinstance(self.vision, VisionConfig):
            raise ValueError(f"vision must be a ViT config, got {type(self.vision).__name__}")
        patches = self.vision.grid_size**2
        if not 0.0 < self.mask_ratio < 1.0 or kept_patch_count(patches, self.mask_ratio) >= patches:
            raise ValueError(f"mask_ratio must be in (0, 1) and mask at least one of the {patches} patches, got {self.mask_ratio}")
        if self.vision.stem != "patch":
            raise ValueError(f"vision.stem must be 'patch' for MAE (a conv stem leaks the masked patches' pixels into "
                             f"the visible tokens), got {self.vision.stem!r}")
        if self.vision.patch_dropout:
            raise ValueError("vision.patch_dropout must be 0 for MAE: mask_ratio chooses the patches the encoder sees")
        for name in ("decoder_width", "decoder_layers", "decoder_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.decoder_width % self.decoder_heads or self.decoder_width % 4:
            raise ValueError(f"decoder_width ({self.decoder_width}) must be divisible by decoder_heads "
                             f"({self.decoder_heads}) and by 4 (its sine-cosine positions)")
        if not self.decoder_mlp_ratio > 0:
            raise ValueError(f"decoder_mlp_ratio must be positive, got {self.decoder_mlp_ratio}")

    def to_dict(self) -> dict:
        return {"family": "mae", **asdict(self)}


@dataclass
class MAEOutput:
    """What :meth:`MAE.forward_features` returns.

    Attributes:
        pred: (B, L, p * p * 3) predicted pixels of every patch.
        target: (B, L, p * p * 3) the input's patches (:func:`~coembed.losses.reconstruction.patchify`).
        mask: (B, L) bool, True where the patch was hidden from the encoder.
    """

    pred: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor


@dataclass
class Masking:
    """One draw of :func:`random_masking`: (B, K) visible patch indices, (B, L) bool mask (True =
    masked) and the (B, L) permutation that puts [visible; masked] tokens back in patch order."""

    keep: torch.Tensor
    mask: torch.Tensor
    restore: torch.Tensor


def random_masking(batch: int, patches: int, mask_ratio: float, *, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> Masking:
    """MAE's per-image random masking: shuffle each image's patches by sorted noise (the ranking FLIP's
    patch dropout uses) and keep the first ``max(1, int(L * (1 - mask_ratio)))``."""
    order = rank_patches(batch, patches, generator=generator, device=device)  # (B, L): visible first
    keep = order[:, : kept_patch_count(patches, mask_ratio)]  # (B, K)
    mask = torch.ones(batch, patches, dtype=torch.bool, device=order.device).scatter_(1, keep, False)
    return Masking(keep=keep, mask=mask, restore=order.argsort(dim=1))


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B, K) of each sequence x (B, L, D) -> (B, K, D)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class MAEDecoder(nn.Module):
    """Encoder tokens -> mask tokens filled in, patch order restored, fixed positions -> pixels per patch."""

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        v, width = cfg.vision, cfg.decoder_width
        self.class_token = v.class_token
        self.embed = nn.Linear(v.width, width)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        pos = sincos_2d(v.grid_size, width)  # (L, width)
        if v.class_token:
            pos = torch.cat([pos.new_zeros(1, width), pos])  # the class token has no position, as MAE
        # A function of the shape: recomputed, not saved, and never trained.
        self.register_buffer("pos_embed", pos, persistent=False)
        self.transformer = Transformer(width, cfg.decoder_layers, cfg.decoder_heads, cfg.decoder_mlp_ratio, eps=v.ln_eps)
        self.transformer.init_weights()
        self.norm = nn.LayerNorm(width, eps=v.ln_eps)
        self.pred = nn.Linear(width, v.patch_size**2 * 3)

    def forward(self, latent: torch.Tensor, masking: Masking) -> torch.Tensor:
        """(B, [1 +] K, encoder width) -> (B, L, p * p * 3)."""
        x = self.embed(latent)  # (B, [1 +] K, width)
        first, visible = (x[:, :1], x[:, 1:]) if self.class_token else (None, x)
        b, patches = masking.mask.shape
        filler = self.mask_token.to(x.dtype).expand(b, patches - visible.shape[1], -1)  # (B, L - K, width)
        x = gather_tokens(torch.cat([visible, filler], dim=1), masking.restore)  # (B, L, width), patch order
        if first is not None:
            x = torch.cat([first, x], dim=1)  # (B, 1 + L, width)
        x = self.norm(self.transformer(x + self.pos_embed.to(x.dtype)))
        return self.pred(x[:, int(self.class_token):])  # (B, L, p * p * 3)


class MAE(nn.Module):
    """ViT masked autoencoder: ``visual`` (the tower to pre-train) and a light decoder.

    Args:
        cfg: model shape.
    """

    config_class = MAEConfig

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(replace(cfg.vision, proj=False), cfg.vision.width)
        self.decoder = MAEDecoder(cfg)

    def random_masking(self, batch: int, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> Masking:
        return random_masking(batch, self.cfg.vision.grid_size**2, self.cfg.mask_ratio, generator=generator, device=device)

    def forward_encoder(self, images: torch.Tensor, masking: Masking) -> torch.Tensor:
        """The tower on the visible patches only: (B, 3, H, W) -> (B, [1 +] K, width) after ``ln_post``."""
        x = self.visual.embed_tokens(images)  # (B, [1 +] L, width), positions added
        if self.visual.class_embedding is not None:
            x = torch.cat([x[:, :1], gather_tokens(x[:, 1:], masking.keep)], dim=1)  # (B, 1 + K, width)
        else:
            x = gather_tokens(x, masking.keep)  # (B, K, width)
        return self.visual.ln_post(self.visual.transformer(self.visual.ln_pre(x)))

    def forward_features(self, images: torch.Tensor, generator: torch.Generator | None = None) -> MAEOutput:
        """Mask, encode the visible patches, decode every patch; the mask is drawn from ``generator``."""
        masking = self.random_masking(images.shape[0], generator, images.device)
        pred = self.decoder(self.forward_encoder(images, masking), masking)
        return MAEOutput(pred=pred, target=patchify(images, self.cfg.vision.patch_size), mask=masking.mask)

    def no_weight_decay(self) -> set[str]:
        """Gains, biases, embeddings, the class and mask tokens: what AdamW must not decay."""
        skip = ("embedding", "mask_token")
        return {name for name, p in self.named_parameters() if p.ndim < 2 or any(s in name for s in skip)}
