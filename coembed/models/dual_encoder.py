"""CLIP / ALIGN / SigLIP dual encoder: two towers projected into one L2-normalised space.

State-dict names follow OpenCLIP's ``CLIP`` class (``visual.*``, ``token_embedding``,
``transformer.*``, ``ln_final``, ``text_projection``, ``logit_scale`` and, for SigLIP,
``logit_bias``), so OpenAI/OpenCLIP checkpoints map onto it key for key. With a Hugging Face text
tower (``text.tower = "hf"``) the text side is ``text.transformer.*`` + ``text.proj``, as in
OpenCLIP's ``CustomTextCLIP`` with an ``HFTextEncoder``.
"""

from __future__ import annotations

import math
from dataclasses import InitVar, asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from coembed.layers.mlp import ACTIVATIONS
from coembed.towers.hf_text import HFTextConfig, HFTextTower
from coembed.towers.resnet import ModifiedResNet, ResNetConfig
from coembed.towers.text_transformer import TextConfig, TextTower
from coembed.towers.vit import VisionConfig, VisionTransformer

MAX_LOGIT_SCALE = 100.0


@dataclass(kw_only=True)
class DualEncoderConfig:
    """A dual encoder: tower shapes, shared embedding size and the temperature set-up."""

    embed_dim: int = 256
    vision: VisionConfig | ResNetConfig = field(default_factory=VisionConfig)
    # The CLIP text transformer, or (``{"tower": "hf", ...}``) a Hugging Face encoder folder.
    text: TextConfig | HFTextConfig = field(default_factory=TextConfig)
    # Transformer activation of both towers: "gelu", "quick_gelu" (OpenAI's weights) or "gelu_tanh" (SigLIP).
    act: str = "gelu"
    # Input alias kept for configs written before ``act`` existed: quick_gelu=True means act="quick_gelu".
    # Not a field: the config holds the activation once, in ``act``.
    quick_gelu: InitVar[bool | None] = None
    # log of the initial logit multiplier: CLIP uses 1/0.07, SigLIP uses 10.
    init_logit_scale: float = math.log(1 / 0.07)
    # SigLIP's learned bias (-10 in the paper); None for the softmax (CLIP/ALIGN) loss.
    init_logit_bias: float | None = None

    def __post_init__(self, quick_gelu: bool | None) -> None:
        if isinstance(self.vision, dict):
            kind = self.vision.get("tower", "vit")
            self.vision = ResNetConfig(**self.vision) if kind == "resnet" else VisionConfig(**self.vision)
        if isinstance(self.text, dict):
            self.text = text_tower_config(self.text)
        if self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")
        if quick_gelu and self.act not in ("gelu", "quick_gelu"):
            raise ValueError(f"quick_gelu=True contradicts act={self.act!r}")
        if quick_gelu:
            self.act = "quick_gelu"
        if isinstance(self.vision, VisionConfig) and not self.vision.proj and self.vision.width != self.embed_dim:
            raise ValueError(f"vision.proj=False needs embed_dim == vision.width ({self.vision.width}), got {self.embed_dim}")

    def to_dict(self) -> dict:
        return {"family": "dual_encoder", **asdict(self)}


TEXT_TOWERS = ("transformer", "hf")


def text_tower_config(data: dict) -> TextConfig | HFTextConfig:
    """A text config from its dict; ``tower`` picks the kind (absent: the CLIP transformer)."""
    data = dict(data)
    kind = data.get("tower", "transformer")
    if kind not in TEXT_TOWERS:
        raise ValueError(f"text.tower must be one of {TEXT_TOWERS}, got {kind!r}")
    if kind == "hf":
        return HFTextConfig(**data)
    data.pop("tower", None)
    return TextConfig(**data)


@dataclass
class DualEncoderOutput:
    """What :meth:`DualEncoder.forward` returns: embeddings plus the temperature (and bias)."""

    image_emb: torch.Tensor
    text_emb: torch.Tensor
    logit_scale: torch.Tensor
    logit_bias: torch.Tensor | None


class DualEncoder(TextTower):
    """Image tower (ViT or ModifiedResNet) + text tower aligned in one space.

    Args:
        cfg: model configuration.
    """

    config_class = DualEncoderConfig

    def __init__(self, cfg: DualEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if isinstance(cfg.vision, ResNetConfig):
            self.visual = ModifiedResNet(cfg.vision, cfg.embed_dim)
        else:
            self.visual = VisionTransformer(cfg.vision, cfg.embed_dim, act=cfg.act)
        if isinstance(cfg.text, HFTextConfig):
            self.text = HFTextTower(cfg.text, cfg.embed_dim)
            self.text_cfg = cfg.text
        else:
            self._build_text(cfg.text, cfg.embed_dim, act=cfg.act)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        if cfg.init_logit_bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
        else:
            self.logit_bias = None

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embed images (B, 3, H, W) -> (B, embed_dim), L2-normalised if ``normalize``."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embed token ids (B, T) -> (B, embed_dim); trailing padding is trimmed first."""
        if isinstance(self.text_cfg, HFTextConfig):
            x = self.text(tokens)
        else:
            x = self.text_head(tokens, self.text_features(tokens))
        return F.normalize(x, dim=-1) if normalize else x

    def project_text(self, pooled: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Embed pooled Hugging Face tower features (B, hidden) -> (B, embed_dim): the trainable part of a
        frozen tower, fed from a feature cache."""
        if not isinstance(self.text_cfg, HFTextConfig):
            raise ValueError("project_text needs a Hugging Face text tower (text.tower = 'hf')")
        x = self.text.forward_head(pooled)
        return F.normalize(x, dim=-1) if normalize else x

    def temperature(self) -> torch.Tensor:
        """The logit multiplier ``exp(logit_scale)``, clamped at 100 as in CLIP."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> DualEncoderOutput:
        return DualEncoderOutput(
            image_emb=self.encode_image(images, normalize=True),
            text_emb=self.encode_text(tokens, normalize=True),
            logit_scale=self.temperature(),
            logit_bias=self.logit_bias,
        )

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW must not decay: gains, biases, embeddings and the temperature."""
        names = set()
        for name, p in self.named_parameters():
            if p.ndim < 2 or "embedding" in name or name in ("logit_scale", "logit_bias"):
                names.add(name)
        return names
