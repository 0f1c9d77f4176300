"""BLIP-2's Querying Transformer (Li et al., 2023): learned queries that read a frozen image encoder and
feed a frozen language model.

The Q-Former is one Transformer over [queries; text]: every block has a self-attention shared by the
queries and the text, and every ``cross_every``-th block (BLIP-2: every other, blocks 0, 2, ...) a
cross-attention from the queries only to the frozen ViT's tokens; the feed-forward is separate for
queries and text (BLIP-2's ``intermediate_query``). Blocks are pre-LayerNorm (coembed's layers) where
BLIP-2's BERT is post-LN. Who sees whom is the self-attention mask of the objective
(:func:`itc_mask`, :func:`itg_mask`, :func:`itm_mask`), so one pass serves each objective.

Stage 1 (``stage: 1``, representation learning) trains three objectives (coembed/objectives/qformer.py):
ITC (query outputs vs the text's first token, similarity = the best of the queries), ITG (captioning:
the text decodes causally while reading the queries) and ITM (matched or not, hard negatives from the
ITC similarities, logits averaged over the queries). Stage 2 (``stage: 2``, generative learning) maps
the query outputs linearly to the LM's width and puts them before the caption as soft prompts; the
frozen LM's next-token loss on the caption trains the Q-Former and that projection.

Captioning interface: in stage 1 ``caption_memory`` is the image tokens and ``caption_logits`` the ITG
pass; in stage 2 the memory is the soft prompts and the logits are the LM's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from coembed.generation.spec import DecodingSpec
from coembed.layers.attention import Attention
from coembed.layers.mlp import Mlp
from coembed.layers.transformer import mlp_hidden
from coembed.errors import ConfigError
from coembed.models.bridging import Bridge, check_bridge, check_bridge_task, pretrained_tokenizer
from coembed.models.causal_lm import LMConfig, forward_with_prefix
from coembed.towers.vit import VisionConfig

MAX_LOGIT_SCALE = 100.0


@dataclass(kw_only=True)
class QFormerConfig:
    """A Q-Former bridge: frozen ViT, the Q-Former (its own text embeddings), the LM and the stage."""

    vision: VisionConfig | None = None  # None: read from vision_path (or `tiny`'s tower without one)
    vision_path: str = ""
    lm: LMConfig = field(default_factory=LMConfig)
    context_length: int = 48
    stage: int = 1
    num_queries: int = 8  # BLIP-2: 32
    width: int = 128
    layers: int = 4
    heads: int = 2
    cross_every: int = 2
    mlp_ratio: float = 4.0
    embed_dim: int = 64  # ITC space (BLIP-2: 256)
    vocab_size: int = 1024  # the Q-Former's text side (the trainer sets the tokenizer's ids)
    pad_id: int = 0
    eot_id: int = 2
    init_temperature: float = 0.07

    def __post_init__(self) -> None:
        check_bridge(self)
        if self.stage not in (1, 2) or isinstance(self.stage, bool):
            raise ValueError(f"stage must be 1 (ITC, ITG, ITM) or 2 (soft prompts into the LM), got {self.stage!r}")
        for name in ("num_queries", "width", "layers", "heads", "cross_every", "embed_dim", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        for name in ("pad_id", "eot_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"{name} must be in [0, vocab_size={self.vocab_size}), got {getattr(self, name)}")
        if not 0.0 < self.init_temperature <= 1.0:
            raise ValueError(f"init_temperature must be in (0, 1], got {self.init_temperature}")

    def pretrained_tokenizer(self):
        return pretrained_tokenizer(self)

    def check_task(self, task: str) -> None:
        """Captioning in either stage; VQA in stage 2 only (stage 1 trains the Q-Former's own ITC/ITG/ITM)."""
        check_bridge_task(self, task)
        if task == "vqa" and self.stage == 1:
            raise ConfigError("task 'vqa' trains the Q-Former through the LM: set model.stage=2 (stage 1 has its own "
                              "ITC/ITG/ITM objective on captions)")

    def to_dict(self) -> dict:
        return {"family": "qformer", **asdict(self)}


# ----------------------------------------------------------------------------- attention masks
def _layout(num_queries: int, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q + T,) bool "is a text position" and (B, Q + T) bool "is a real key" of the joint sequence."""
    b, t = text_mask.shape
    is_text = torch.cat([torch.zeros(num_queries, dtype=torch.bool), torch.ones(t, dtype=torch.bool)]).to(text_mask.device)
    real = torch.cat([text_mask.new_ones(b, num_queries, dtype=torch.bool), text_mask.bool()], dim=1)
    return is_text, real


def _finish(allowed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(L, L) or (B, L, L) rule & real keys, diagonal always allowed (no empty row) -> (B, 1, L, L)."""
    length = real.shape[1]
    eye = torch.eye(length, dtype=torch.bool, device=real.device)
    return ((allowed & real[:, None, :]) | eye)[:, None]


def itc_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """Uni-modal mask (ITC): queries see queries, text sees text, never across. -> (B, 1, Q + T, Q + T)."""
    is_text, real = _layout(num_queries, text_mask)
    return _finish(is_text[:, None] == is_text[None, :], real)


def itg_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """Multimodal causal mask (ITG): queries see queries only; text token t sees every query and the
    text up to t. -> (B, 1, Q + T, Q + T)."""
    is_text, real = _layout(num_queries, text_mask)
    length = is_text.shape[0]
    causal = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
    allowed = ~is_text[None, :] | (is_text[:, None] & causal)  # query columns for all; text rows: text <= t
    return _finish(allowed, real)


def itm_mask(num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """Bidirectional mask (ITM): every position sees every real position. -> (B, 1, Q + T, Q + T)."""
    is_text, real = _layout(num_queries, text_mask)
    return _finish(torch.ones(is_text.shape[0], is_text.shape[0], dtype=torch.bool, device=real.device), real)


# ----------------------------------------------------------------------------- blocks
class QFormerBlock(nn.Module):
    """Shared self-attention, queries-only cross-attention (if ``cross``), separate query / text MLPs."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, cross: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        if cross:
            self.ln_cross = nn.LayerNorm(width)
            self.cross_attn = Attention(width, heads)
        self.cross = cross
        hidden = mlp_hidden(width, mlp_ratio)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, hidden)
        self.ln_2_query = nn.LayerNorm(width)
        self.mlp_query = Mlp(width, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, num_queries: int, image: torch.Tensor | None) -> torch.Tensor:
        """x (B, Q + T, W), mask (B, 1, Q + T, Q + T), image (B, N, W) -> (B, Q + T, W)."""
        x = x + self.attn(self.ln_1(x), mask=mask)
        q, t = x[:, :num_queries], x[:, num_queries:]
        if self.cross and num_queries:
            q = q + self.cross_attn.cross(self.ln_cross(q), image)
        q = q + self.mlp_query(self.ln_2_query(q))
        t = t + self.mlp(self.ln_2(t))
        return torch.cat([q, t], dim=1)


class QFormer(Bridge):
    """Frozen ViT, Q-Former with ITC / ITM / ITG heads, and the projection into the frozen LM.

    Args:
        cfg: model configuration.
    """

    config_class = QFormerConfig

    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self._build_towers(cfg)
        w = cfg.width
        self.image_proj = nn.Linear(cfg.vision.width, w)
        self.queries = nn.Parameter(0.02 * torch.randn(cfg.num_queries, w))
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, w))
        self.ln_embed = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(QFormerBlock(w, cfg.heads, cfg.mlp_ratio, i % cfg.cross_every == 0) for i in range(cfg.layers))
        self.ln_final = nn.LayerNorm(w)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.vision_proj = nn.Linear(w, cfg.embed_dim)
        self.text_proj = nn.Linear(w, cfg.embed_dim)
        self.itm_head = nn.Linear(w, 2)
        self.itg_bias = nn.Parameter(torch.zeros(cfg.vocab_size))  # ITG head: tied to token_embedding
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))
        self.lm_proj = nn.Linear(w, self.lm.width)  # stage 2: query outputs -> soft prompts
        self.check_length(cfg.num_queries)

    @property
    def pad_id(self) -> int:
        return self.cfg.pad_id if self.cfg.stage == 1 else self.cfg.lm.pad_id

    def decoding_spec(self, tokenizer) -> DecodingSpec:
        """Stage 2: the LM's (:func:`~coembed.models.bridging.bridge_spec`); stage 1: the ITG decoder's
        ``<sot> ... <eot>`` rows (the Q-Former's own text ids, coembed's tokenizer)."""
        if self.cfg.stage == 2:
            return super().decoding_spec(tokenizer)
        return DecodingSpec((tokenizer.sot_id,), self.cfg.eot_id, self.cfg.pad_id, self.cfg.context_length)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, width): the frozen tower's tokens at the Q-Former's width."""
        return self.image_proj(self.image_tokens(images))

    def forward_features(self, image: torch.Tensor | None, tokens: torch.Tensor | None,
                         mask_fn=itm_mask) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One Q-Former pass: queries (when ``image`` (B, N, width) is given) and text (when ``tokens`` (B, T)
        are) under ``mask_fn``; -> query outputs (B, Q, width) or None, text outputs (B, T, width) or None."""
        parts, b = [], (image if image is not None else tokens).shape[0]
        q = self.cfg.num_queries if image is not None else 0
        if q:
            parts.append(self.queries.expand(b, -1, -1))
        if tokens is not None:
            if tokens.shape[1] > self.cfg.context_length:
                raise ValueError(f"tokens have length {tokens.shape[1]} > context_length {self.cfg.context_length}")
            parts.append(self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]])
            text_mask = tokens != self.cfg.pad_id
        else:
            text_mask = torch.zeros(b, 0, dtype=torch.bool, device=image.device)
        x = self.ln_embed(torch.cat(parts, dim=1))  # (B, Q + T, width)
        mask = mask_fn(q, text_mask)
        for block in self.blocks:
            x = block(x, mask, q, image)
        x = self.ln_final(x)
        return (x[:, :q] if q else None), (x[:, q:] if tokens is not None else None)

    # -- stage-1 heads -----------------------------------------------------------------------------
    def temperature(self) -> torch.Tensor:
        """The ITC logit multiplier (1 / temperature), at most 100."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def itc_embeddings(self, query_out: torch.Tensor, text_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised ITC embeddings: per query (B, Q, D) and per text, from its first token (B, D)."""
        return F.normalize(self.vision_proj(query_out), dim=-1), F.normalize(self.text_proj(text_out[:, 0]), dim=-1)

    def itc_similarity(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """(B, Q, D), (M, D) -> (B, M): for each image and text the best query's similarity (BLIP-2), scaled."""
        sims = torch.einsum("bqd,md->bmq", image_emb.float(), text_emb.float())  # (B, M, Q)
        return self.temperature().float() * sims.amax(dim=-1)

    def itg_logits(self, text_out: torch.Tensor) -> torch.Tensor:
        """(B, T, width) -> (B, T, vocab), the output projection tied to the token embeddings."""
        return F.linear(text_out, self.token_embedding.weight.to(text_out.dtype), self.itg_bias.to(text_out.dtype))

    def itm_logits_from(self, query_out: torch.Tensor) -> torch.Tensor:
        """(B, Q, width) query outputs of an ITM pass -> (B, 2), averaged over queries (BLIP-2)."""
        return self.itm_head(query_out).mean(dim=1)

    def itm_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 2) not-matched / matched logits of the pairs (image i, text i)."""
        query_out, _ = self.forward_features(self.image_features(images), tokens, itm_mask)
        return self.itm_logits_from(query_out)

    # -- captioning ------------------------------------------------------------------------------
    def soft_prompts(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, Q, LM width): the query outputs (queries alone) projected into the LM."""
        query_out, _ = self.forward_features(self.image_features(images), None)
        return self.lm_proj(query_out)

    def caption_memory(self, images: torch.Tensor) -> torch.Tensor:
        """Stage 1: image features (B, N, width) for the ITG pass; stage 2: soft prompts (B, Q, LM width)."""
        return self.image_features(images) if self.cfg.stage == 1 else self.soft_prompts(images)

    def caption_logits(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, vocab): the ITG pass (stage 1) or the LM after the soft prompts (stage 2)."""
        if self.cfg.stage == 2:
            return forward_with_prefix(self.lm, memory, tokens, self.cfg.lm.pad_id)
        _, text_out = self.forward_features(memory, tokens, itg_mask)
        return self.itg_logits(text_out)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Caption logits (B, T, vocab) of ``tokens`` given ``images`` (see :meth:`caption_logits`)."""
        return self.caption_logits(self.caption_memory(images), tokens)
