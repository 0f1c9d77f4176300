"""ALBEF / BLIP-style fusion encoder: a ViT, a bidirectional text encoder whose top layers cross-attend
to the image tokens, and the heads of the three objectives (ITC, ITM, MLM).

Reads top-down from the blocks to the model. The text side is split as in ALBEF (BERT's 6 + 6 layers):
``text`` holds the embeddings and the text-only layers (the unimodal encoder that ITC uses), ``fusion``
the layers that add cross-attention to the image tokens (the multimodal encoder of ITM and MLM).
``text`` is either trained from scratch (:class:`FusionTextConfig`) or, as ALBEF starts from BERT, a
Hugging Face BERT-like folder (:class:`FusionHFTextConfig`, e.g. the MiniLM of ``albef-minilm``) with
an adapter to the fusion width.
Blocks are pre-LayerNorm (coembed's :class:`~coembed.layers.transformer.ResidualAttentionBlock`); padding
keys are masked out, so a real token's state does not depend on the padding a batch carries.

Momentum (EMA) copies of the unimodal encoders and projections (``visual_m``, ``text_m``,
``text_proj_m``) and the feature queues are parameters / buffers of the model, so they are saved in
``model.safetensors`` with the weights and a resumed run continues them exactly.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from coembed.layers.cross_attention import CrossModalBlock
from coembed.layers.transformer import Transformer, check_text_shape
from coembed.towers.bert import BertConfig, BertModel, load_bert_weights
from coembed.towers.hf_text import bert_config, mean_pool, resolve_folder
from coembed.towers.text_transformer import trim_padding
from coembed.towers.vit import VisionConfig, VisionTransformer

MAX_LOGIT_SCALE = 100.0


@dataclass(kw_only=True)
class FusionTextConfig:
    """The text side: ``layers`` text-only blocks, then ``fusion_layers`` blocks with cross-attention."""

    vocab_size: int = 1024
    context_length: int = 48
    width: int = 128
    heads: int = 2
    layers: int = 2
    fusion_layers: int = 2
    mlp_ratio: float = 4.0
    pad_id: int = 0
    eot_id: int = 2
    mask_id: int = 4
    special_ids: tuple[int, ...] = (0, 1, 2, 3, 4)  # never masked nor drawn by MLM (pad, sot, eot, unk, mask)
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.special_ids = tuple(int(i) for i in self.special_ids)
        check_text_shape(self, ("vocab_size", "context_length", "width", "heads", "fusion_layers"), ("pad_id", "eot_id", "mask_id"))
        if self.layers < 0:
            raise ValueError(f"text.layers must be >= 0, got {self.layers}")


# BERT WordPiece specials: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103 (MiniLM, BERT, BGE).
BERT_MASK_ID = 103
BERT_SPECIAL_IDS = (0, 100, 101, 102, 103)


@dataclass(kw_only=True)
class FusionHFTextConfig:
    """A Hugging Face BERT-like encoder folder as the text-only encoder, then ``fusion_layers`` new blocks
    with cross-attention (ALBEF initialises both halves from BERT-base; a 6-layer MiniLM gives the
    text half). ``frozen`` locks the encoder (LiT); an adapter (linear + LayerNorm) maps its states to the
    fusion ``width``, and ITC pools the adapted states (``pooling``: "mean" over real tokens, as
    sentence-transformers, or "cls")."""

    tower: str = "hf"
    path: str = ""  # a folder with config.json + weights + tokenizer.json, or a packaged name (see towers.hf_text)
    frozen: bool = True
    pooling: str = "mean"
    context_length: int = 64
    bert: BertConfig | None = None  # read from ``path`` when not given
    width: int = 128
    heads: int = 2
    fusion_layers: int = 2
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-5
    mask_id: int = BERT_MASK_ID
    special_ids: tuple[int, ...] = BERT_SPECIAL_IDS  # never masked nor drawn by MLM

    def __post_init__(self) -> None:
        self.special_ids = tuple(int(i) for i in self.special_ids)
        if self.tower != "hf":
            raise ValueError(f"text.tower must be 'hf' for a Hugging Face text encoder, got {self.tower!r}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"text.pooling must be 'mean' or 'cls', got {self.pooling!r}")
        self.bert = bert_config(self.bert, self.path)
        for name in ("width", "heads", "fusion_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"text.{name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"text.width ({self.width}) must be divisible by text.heads ({self.heads})")
        if not 2 <= self.context_length <= self.bert.max_position_embeddings:
            raise ValueError(f"text.context_length must be in [2, {self.bert.max_position_embeddings}], got {self.context_length}")
        if not 0 <= self.mask_id < self.bert.vocab_size:
            raise ValueError(f"text.mask_id must be in [0, vocab_size={self.bert.vocab_size}), got {self.mask_id}")

    @property
    def vocab_size(self) -> int:
        return self.bert.vocab_size

    @property
    def pad_id(self) -> int:
        return self.bert.pad_token_id


def _text_config(data: dict | FusionTextConfig | FusionHFTextConfig) -> FusionTextConfig | FusionHFTextConfig:
    if not isinstance(data, dict):
        return data
    if data.get("tower") == "hf":
        return FusionHFTextConfig(**data)
    return FusionTextConfig(**data)


@dataclass(kw_only=True)
class FusionConfig:
    """An ALBEF-style fusion model: towers, shared ITC space, momentum and queue settings."""

    embed_dim: int = 128
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: FusionTextConfig | FusionHFTextConfig = field(default_factory=FusionTextConfig)
    init_temperature: float = 0.07  # ALBEF's initial ITC temperature (learned; logit multiplier <= 100)
    momentum: float = 0.995  # EMA coefficient of the momentum encoders
    queue_size: int = 4096  # momentum features kept as extra ITC candidates
    alpha: float = 0.4  # weight of the momentum-distillation targets once ramped up
    alpha_ramp: float = 1.0  # share of training (``progress``) over which alpha ramps linearly from 0
    # A learned position embedding added to the image tokens the fusion layers attend to (as DETR adds
    # positions to the keys of its cross-attention), zero at init: a warm-started model is unchanged.
    fusion_image_positions: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        self.text = _text_config(self.text)
        if self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")
        if not self.vision.class_token or self.vision.pool != "tok" or not self.vision.proj:
            raise ValueError("vision must use its class token with a projection (class_token, pool 'tok', proj) for ITC")
        if not 0.0 < self.init_temperature <= 1.0:
            raise ValueError(f"init_temperature must be in (0, 1], got {self.init_temperature}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {self.queue_size}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not 0.0 < self.alpha_ramp <= 1.0:
            raise ValueError(f"alpha_ramp must be in (0, 1], got {self.alpha_ramp}")

    def to_dict(self) -> dict:
        return {"family": "albef", **asdict(self)}


# ----------------------------------------------------------------------------- blocks
def padding_mask(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, T) token ids -> (B, T) bool, True at real tokens."""
    return tokens != pad_id


def _attn_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask[:, None, None, :]  # (B, 1, 1, T): which keys every query may see


class TextEncoder(nn.Module):
    """Token + position embeddings and the text-only bidirectional blocks (the unimodal text encoder)."""

    def __init__(self, cfg: FusionTextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, eps=cfg.ln_eps)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> states (B, T', W) and mask (B, T'); columns of padding only are trimmed."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
        tokens = trim_padding(tokens, self.cfg.pad_id)
        if tokens.shape[1] > self.cfg.context_length:
            raise ValueError(f"tokens have length {tokens.shape[1]} > context_length {self.cfg.context_length}")
        mask = padding_mask(tokens, self.cfg.pad_id)
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        return self.ln_final(self.transformer(x, mask=_attn_mask(mask))), mask


class HFTextEncoder(nn.Module):
    """A Hugging Face BERT encoder (``transformer``, Hugging Face names) and an adapter to the fusion width:
    the unimodal text encoder of :class:`FusionHFTextConfig`.

    With ``frozen`` the encoder runs without gradients, and the states of the last token batch are
    kept and reused when the same tensor comes again (the online and momentum ITC passes of one step
    encode the same captions; frozen weights give the same states)."""

    def __init__(self, cfg: FusionHFTextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = BertModel(cfg.bert)
        self.adapter = nn.Sequential(nn.Linear(cfg.bert.hidden_size, cfg.width), nn.LayerNorm(cfg.width, eps=cfg.ln_eps))
        if cfg.frozen:
            self.transformer.requires_grad_(False)
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype | None] | None = None  # tokens, states, mask, autocast dtype

    @property
    def word_embeddings(self) -> torch.Tensor:
        return self.transformer.embeddings.word_embeddings.weight

    def encoder_states(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> BERT states (B, T', hidden) and mask (B, T'); padding-only columns trimmed."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
        dtype = torch.get_autocast_dtype(tokens.device.type) if torch.is_autocast_enabled(tokens.device.type) else None
        if self.cfg.frozen and self._last is not None and self._last[0] is tokens and self._last[3] == dtype:
            return self._last[1], self._last[2]
        trimmed = trim_padding(tokens, self.cfg.pad_id)
        if trimmed.shape[1] > self.cfg.context_length:
            raise ValueError(f"tokens have length {trimmed.shape[1]} > context_length {self.cfg.context_length}")
        mask = padding_mask(trimmed, self.cfg.pad_id)
        # A frozen encoder runs in float32 outside autocast: casting its 22 M weights to bf16 on every
        # call cost more than the bf16 matmuls saved on CPU.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.frozen), \
                torch.autocast(tokens.device.type, enabled=not self.cfg.frozen and dtype is not None):
            states = self.transformer(trimmed, mask)
        if self.cfg.frozen:
            self._last = (tokens, states, mask, dtype)
        return states, mask

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> adapted states (B, T', width) and mask (B, T')."""
        states, mask = self.encoder_states(tokens)
        return self.adapter(states), mask

    def load_pretrained(self) -> None:
        """The encoder's weights from ``cfg.path`` (the adapter keeps its init)."""
        load_bert_weights(self.transformer, resolve_folder(self.cfg.path))


class MomentumHFText(nn.Module):
    """The momentum text encoder over a frozen Hugging Face encoder: the online model's encoder (shared,
    not a registered submodule: it never changes, so its EMA is itself) and an EMA copy of the adapter."""

    def __init__(self, online: HFTextEncoder) -> None:
        super().__init__()
        self._online = (online,)  # a tuple keeps it out of this module's parameters and state dict
        self.adapter = _frozen_copy(online.adapter)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = self._online[0].encoder_states(tokens)
        return self.adapter(states), mask


class FusionEncoder(nn.Module):
    """The multimodal layers: text states cross-attending to image tokens."""

    def __init__(self, cfg: FusionTextConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CrossModalBlock(cfg.width, cfg.heads, cfg.mlp_ratio, eps=cfg.ln_eps) for _ in range(cfg.fusion_layers))
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, image: torch.Tensor,
                probs: list[torch.Tensor] | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, image, mask=mask, probs=probs)
        return self.ln_final(x)


class MlmHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then the decoder tied to the word embeddings
    (``dense`` maps the fusion width to the embeddings' width when the two differ)."""

    def __init__(self, width: int, vocab_size: int, eps: float, embedding_width: int | None = None) -> None:
        super().__init__()
        out = embedding_width or width
        self.dense = nn.Linear(width, out)
        self.ln = nn.LayerNorm(out, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        """(..., W) fused states -> (..., vocab) logits."""
        return F.linear(self.ln(F.gelu(self.dense(x))), word_embeddings, self.bias)


# ----------------------------------------------------------------------------- model
class FusionModel(nn.Module):
    """ALBEF: image tower, text encoder, fusion encoder, ITC projections, ITM and MLM heads, momentum
    copies and feature queues.

    Args:
        cfg: model configuration.
    """

    config_class = FusionConfig

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_cfg = cfg.text
        width = cfg.text.width
        self.visual = VisionTransformer(cfg.vision, cfg.embed_dim)
        self.image_to_text = nn.Linear(cfg.vision.width, width) if cfg.vision.width != width else nn.Identity()
        tokens = 1 + cfg.vision.grid_size**2  # the class token and the patches
        self.fusion_position_embedding = nn.Parameter(torch.zeros(tokens, width)) if cfg.fusion_image_positions else None
        hf = isinstance(cfg.text, FusionHFTextConfig)
        self.text = HFTextEncoder(cfg.text) if hf else TextEncoder(cfg.text)
        self.fusion = FusionEncoder(cfg.text)
        self.text_proj = nn.Linear(width, cfg.embed_dim)
        self.itm_head = nn.Linear(width, 2)
        self.mlm_head = MlmHead(width, cfg.text.vocab_size, cfg.text.ln_eps, self.word_embeddings().shape[1])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        self.visual_m = _frozen_copy(self.visual)
        self.text_m = MomentumHFText(self.text) if hf and cfg.text.frozen else _frozen_copy(self.text)
        self.text_proj_m = _frozen_copy(self.text_proj)
        self._build_queues(cfg.queue_size, cfg.embed_dim)

    def word_embeddings(self) -> torch.Tensor:
        """(vocab, embedding width) input word embeddings, which the MLM decoder is tied to."""
        return self.text.word_embeddings if isinstance(self.text, HFTextEncoder) else self.text.token_embedding.weight

    def load_pretrained(self) -> None:
        """Start a Hugging Face text encoder from its folder's weights (and its momentum copy with them)."""
        if isinstance(self.text, HFTextEncoder):
            self.text.load_pretrained()
            if not isinstance(self.text_m, MomentumHFText):
                self.text_m.load_state_dict(self.text.state_dict())

    def _build_queues(self, size: int, dim: int) -> None:
        self.register_buffer("image_queue", torch.zeros(size, dim))
        self.register_buffer("text_queue", torch.zeros(size, dim))
        self.register_buffer("idx_queue", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next row to overwrite
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # rows filled so far

    # -- unimodal encoders (ITC) ------------------------------------------------------------
    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All ViT output tokens (B, 1 + grid*grid, vision width); token 0 is the class token."""
        return self.visual.forward_features(images)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim) ITC image embeddings."""
        x = self.visual.forward_head(self.image_tokens(images))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Text-only encoding: (B, T) ids -> states (B, T', width) and padding mask (B, T'), True at real
        tokens (trailing all-padding columns are trimmed)."""
        return self.text(tokens)

    def pool_text(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text states (B, T, W) -> (B, W) ITC input: the first ([CLS]/start) token, or with a Hugging
        Face encoder of ``pooling`` "mean" the mean over real tokens."""
        return mean_pool(hidden, mask) if getattr(self.text_cfg, "pooling", "cls") == "mean" else hidden[:, 0]

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, T) ids -> (B, embed_dim) ITC text embeddings (pooled as :meth:`pool_text`)."""
        x = self.text_proj(self.pool_text(*self.encode_text_tokens(tokens)))
        return F.normalize(x, dim=-1) if normalize else x

    def temperature(self) -> torch.Tensor:
        """The ITC logit multiplier ``exp(logit_scale)`` (1 / temperature), clamped at 100."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    # -- multimodal encoder (ITM, MLM) -------------------------------------------------------
    def fuse(self, text_hidden: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor,
             probs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The fusion layers over given text states: (B, T, W), mask (B, T), image tokens (B, N, vision
        width) -> fused states (B, T, W); cross-attention maps are appended to ``probs`` if a list."""
        if text_hidden.shape[0] != image_tokens.shape[0]:
            raise ValueError(f"text_hidden and image_tokens must have the same batch size, got "
                             f"{text_hidden.shape[0]} and {image_tokens.shape[0]}")
        image = self.image_to_text(image_tokens)
        if self.fusion_position_embedding is not None:
            image = image + self.fusion_position_embedding.to(image.dtype)
        return self.fusion(text_hidden, text_mask, image, probs)

    def itm_head_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, T, W) fused states -> (B, 2) not-matched / matched logits from the first token."""
        return self.itm_head(fused[:, 0])

    def mlm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """(..., W) fused states -> (..., vocab) masked-token logits."""
        return self.mlm_head(fused, self.word_embeddings())

    def itm_logits(self, images: torch.Tensor, tokens: torch.Tensor, *,
                   return_cross_attention: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """ITM logits ``(B, 2)`` (index 1 = matched) of the pairs (image i, text i).

        With ``return_cross_attention`` also the cross-attention probabilities of every fusion layer,
        each ``(B, heads, T_text, T_image)``, kept in the autograd graph (for Grad-CAM); ``T_text`` is
        the length after trimming trailing padding, ``T_image`` = 1 + grid*grid (class token first).
        """
        hidden, mask = self.encode_text_tokens(tokens)
        probs: list[torch.Tensor] | None = [] if return_cross_attention else None
        logits = self.itm_head_logits(self.fuse(hidden, mask, self.image_tokens(images), probs))
        return (logits, probs) if return_cross_attention else logits

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """ITM logits of the pairs, as :meth:`itm_logits`."""
        return self.itm_logits(images, tokens)

    # -- momentum model and queues ----------------------------------------------------------
    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        text = (self.text.adapter, self.text_m.adapter) if isinstance(self.text_m, MomentumHFText) else (self.text, self.text_m)
        return [(self.visual, self.visual_m), text, (self.text_proj, self.text_proj_m)]

    @torch.no_grad()
    def sync_momentum(self) -> None:
        """Set every momentum parameter to its online value (after loading weights into a fresh model)."""
        for online, ema in self.momentum_pairs():
            for p, p_m in zip(online.parameters(), ema.parameters()):
                p_m.copy_(p)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``p_m = m * p_m + (1 - m) * p`` for every momentum parameter (ALBEF's ``_momentum_update``)."""
        m = self.cfg.momentum
        for online, ema in self.momentum_pairs():
            for p, p_m in zip(online.parameters(), ema.parameters()):
                p_m.mul_(m).add_(p.detach(), alpha=1 - m)

    @torch.no_grad()
    def momentum_features(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ITC embeddings (B, embed_dim) of the momentum encoders."""
        image = self.visual_m(images)
        text = self.text_proj_m(self.pool_text(*self.text_m(tokens)))
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1)

    def queue(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The filled part of the queues: image (Q, D), text (Q, D) features and image ids (Q,)."""
        n = int(self.queue_count)
        return self.image_queue[:n], self.text_queue[:n], self.idx_queue[:n]

    @torch.no_grad()
    def enqueue(self, image_feat: torch.Tensor, text_feat: torch.Tensor, image_ids: torch.Tensor) -> None:
        """Write a batch of momentum features (and their image ids) over the oldest queue rows."""
        size = self.cfg.queue_size
        if size == 0:
            return
        image_feat, text_feat, image_ids = image_feat[-size:], text_feat[-size:], image_ids[-size:]
        rows = (int(self.queue_ptr) + torch.arange(image_feat.shape[0], device=image_feat.device)) % size
        self.image_queue[rows] = image_feat.to(self.image_queue.dtype)
        self.text_queue[rows] = text_feat.to(self.text_queue.dtype)
        self.idx_queue[rows] = image_ids.to(self.idx_queue.device, torch.long)
        self.queue_ptr.fill_((int(self.queue_ptr) + image_feat.shape[0]) % size)
        self.queue_count.fill_(min(size, int(self.queue_count) + image_feat.shape[0]))

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW must not decay: gains, biases, embeddings and the temperature."""
        return {name for name, p in self.named_parameters()
                if p.ndim < 2 or "embedding" in name or name == "logit_scale"}


def _frozen_copy(module: nn.Module) -> nn.Module:
    """A copy with the same weights that the optimizer never sees (it follows by EMA)."""
    ema = copy.deepcopy(module)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema
