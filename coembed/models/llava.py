"""LLaVA (Liu et al., 2023; LLaVA-1.5's projector): image patch tokens projected into the LM's embedding
space and read by the LM as a prefix before the caption.

The frozen ViT's patch tokens (class token dropped, LLaVA's ``select_feature="patch"``) go through a
2-layer MLP projector (Linear-GELU-Linear, LLaVA-1.5's ``mlp2x_gelu``) to the LM's width; the LM reads
[image tokens; caption] and the loss is the next-token loss on the caption tokens only.
Training has LLaVA's two stages, chosen by ``stage``: 1, feature alignment, trains the projector only
(LM frozen); 2, instruction tuning (here: captioning), trains the projector and the LM. ``lm.frozen``
follows ``stage``. Stage 2 usually starts from a stage-1 run (``init_from`` with ``init_prefixes:
["projector."]``).

With ``tiling`` (AnyRes / Monkey, :mod:`coembed.layers.tiling`) the input image is ``image_size`` pixels,
larger than the encoder's ``vision.image_size``; it is encoded as a global view plus a grid of tiles,
each pooled to ``tile_pooled^2`` tokens with a tile-position embedding, before the projector.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from coembed.layers.tiling import Tiler
from coembed.models.bridging import Bridge, check_bridge, check_bridge_task, pretrained_tokenizer
from coembed.models.causal_lm import LMConfig, forward_with_prefix
from coembed.towers.frozen_vision import image_tokens
from coembed.towers.vit import VisionConfig

DEFAULT_GRIDS = ((1, 1), (1, 2), (2, 1), (2, 2))


@dataclass(kw_only=True)
class LlavaConfig:
    """A LLaVA bridge: frozen image tower, projector, LM, training stage and optional tiling."""

    vision: VisionConfig | None = None  # None: read from vision_path (or `tiny`'s tower without one)
    vision_path: str = ""
    lm: LMConfig = field(default_factory=LMConfig)
    context_length: int = 48  # caption tokens after the image tokens
    stage: int = 1
    projector_hidden: int = 0  # 0: the LM's width (LLaVA-1.5)
    tiling: bool = False
    image_size: int = 0  # input size with tiling (0: the encoder's vision.image_size)
    tile_grids: list = field(default_factory=lambda: [list(g) for g in DEFAULT_GRIDS])
    tile_pooled: int = 2

    def __post_init__(self) -> None:
        check_bridge(self)
        if self.stage not in (1, 2) or isinstance(self.stage, bool):
            raise ValueError(f"stage must be 1 (projector only) or 2 (projector and LM), got {self.stage!r}")
        self.lm.frozen = self.stage == 1
        if isinstance(self.projector_hidden, bool) or not isinstance(self.projector_hidden, int) or self.projector_hidden < 0:
            raise ValueError(f"projector_hidden must be an int >= 0, got {self.projector_hidden!r}")
        self._check_tiling()

    def _check_tiling(self) -> None:
        self.tile_grids = [list(g) for g in self.tile_grids]
        if not self.tile_grids or any(len(g) != 2 or min(g) < 1 for g in self.tile_grids):
            raise ValueError(f"tile_grids must be a non-empty list of [cols, rows] with both >= 1, got {self.tile_grids!r}")
        if not isinstance(self.tile_pooled, int) or self.tile_pooled < 1 or self.tile_pooled > self.vision.grid_size:
            raise ValueError(f"tile_pooled must be in [1, vision grid {self.vision.grid_size}], got {self.tile_pooled!r}")
        if self.image_size < 0 or (self.image_size and not self.tiling and self.image_size != self.vision.image_size):
            raise ValueError(f"image_size must be 0 or, without tiling, vision.image_size ({self.vision.image_size}); "
                             f"got {self.image_size}")

    def pretrained_tokenizer(self):
        return pretrained_tokenizer(self)

    def check_task(self, task: str) -> None:
        """Captioning, or VQA with a coembed LM (:func:`~coembed.models.bridging.check_bridge_task`)."""
        check_bridge_task(self, task)

    def to_dict(self) -> dict:
        return {"family": "llava", **asdict(self)}


class Llava(Bridge):
    """Frozen ViT -> (tiles ->) MLP projector -> prefix of the LM.

    Args:
        cfg: model configuration.
    """

    config_class = LlavaConfig

    def __init__(self, cfg: LlavaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._build_towers(cfg)
        vision_width, width = cfg.vision.width, self.lm.width
        hidden = cfg.projector_hidden or width
        self.projector = nn.Sequential(nn.Linear(vision_width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.tiler = Tiler([tuple(g) for g in cfg.tile_grids], cfg.vision.image_size, cfg.tile_pooled, vision_width) if cfg.tiling else None
        self.check_length(self.tiler.max_tokens() if self.tiler is not None else cfg.vision.grid_size**2)

    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, vision width): patch tokens, or with tiling the pooled tokens of every view."""
        if self.tiler is None:
            return self.patch_tokens(images)
        drop = int(self.cfg.vision.class_token)
        return self.tiler(images, lambda views: image_tokens(self.visual, views)[:, drop:])

    def caption_memory(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, LM width): the projected image tokens the LM reads first."""
        return self.projector(self.visual_tokens(images))

    def caption_logits(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) caption ids after the image prefix ``memory`` -> (B, T, vocab) next-token logits."""
        return forward_with_prefix(self.lm, memory, tokens, self.pad_id)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Caption logits (B, T, vocab) of ``tokens`` given ``images``."""
        return self.caption_logits(self.caption_memory(images), tokens)
