"""A small decoder-only language model (family ``causal_lm``) and the language-model section of the bridges.

:class:`CausalLM` is GPT-2-shaped at toy size: token + learned position embeddings, pre-LayerNorm blocks
with causal scaled-dot-product attention (coembed's :class:`~coembed.layers.transformer.Transformer`), a
final LayerNorm and an output projection tied to the token embeddings. Its objective (``lm``) is the
next-token loss on the captions; the images of a batch are not read (the text-only mirror of MAE).

Every LM a bridge (Q-Former, Flamingo, LLaVA) can drive has the same interface:

- ``embed_tokens(ids) -> (B, T, width)`` word embeddings (no positions);
- ``forward_embeds(embeds, mask, before_block=None) -> (B, L, vocab)`` logits over a sequence of input
  embeddings (soft prompts, image tokens and word embeddings mixed); ``before_block(i, h)`` may replace
  the hidden states entering decoder block ``i`` (Flamingo's gated cross-attention);
- ``decoder_layers()`` and ``width``.

:class:`LMConfig` is the ``lm`` section of a bridge's config: ``path`` empty -> a :class:`CausalLM` with
random weights and the shape given; a coembed ``causal_lm`` checkpoint or run folder (e.g. ``coembed train
--preset lm-tiny``) -> its shape, weights and tokenizer; a Hugging Face causal-LM folder (``config.json``
with a ``model_type``) -> :class:`~coembed.towers.hf_causal_lm.HFCausalLM` with its tokenizer.

Tokens: with a coembed LM the rows are coembed's ``<sot> ... <eot>`` ids (a bridge's ``caption_logits``
and a decoder start from ``<sot>``). With a Hugging Face LM they are that model's tokenizer's ids with the
specials its post-processor adds (GPT-2: none), so a decoder starts from the first word's id(s) of a
prompt and stops at ``max_length`` unless the tokenizer appends an end token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coembed.layers.transformer import Transformer, check_text_shape

# The images of a text-only family's batches are loaded but never read: the smallest useful size.
TEXT_ONLY_IMAGE_SIZE = 16


@dataclass(kw_only=True)
class LMShape:
    """Shape of a small coembed causal LM and the token ids it relies on (the trainer sets the ids): what
    the LM's own config and a bridge's LM section share."""

    vocab_size: int = 1024
    context_length: int = 128
    width: int = 128
    layers: int = 4
    heads: int = 2
    mlp_ratio: float = 4.0
    pad_id: int = 0
    eot_id: int = 2
    ln_eps: float = 1e-5


@dataclass(kw_only=True)
class CausalLMConfig(LMShape):
    """The small causal LM (:class:`CausalLM`): its shape and how it trains."""

    # Train at a random start position in [0, context_length - T] so every position embedding learns:
    # a bridge puts its image tokens first and the caption after them, further than captions reach.
    position_jitter: bool = True

    def __post_init__(self) -> None:
        check_lm_shape(self)

    @property
    def image_size(self) -> int:
        return TEXT_ONLY_IMAGE_SIZE

    def check_task(self, task: str) -> None:
        """The LM trains on text rows (task caption); to give it question-answer text, add those lines to the
        captions it trains on (benchmarks/bridges_compare.sh does). It still answers questions blind."""
        if task != "caption":
            from coembed.errors import ConfigError

            raise ConfigError(f"a causal_lm model trains with task 'caption' (next-token loss on the captions), got {task!r}; "
                              "add question-answer lines to its captions to teach it questions")

    def to_dict(self) -> dict:
        return {"family": "causal_lm", **asdict(self)}


def check_lm_shape(cfg: Any, prefix: str = "") -> None:
    """ValueError naming the field for a bad small-LM shape (``prefix`` e.g. ``"lm."``)."""
    check_text_shape(cfg, ("vocab_size", "context_length", "width", "layers", "heads"), ("pad_id", "eot_id"), prefix)


def causal_attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool, True at real positions -> (B, 1, L, L) bool: query i may attend key j when j <= i and
    j is real. The diagonal is always allowed, so a padding row is never empty (SDPA would give NaN);
    real positions never see padding, so their outputs do not depend on it."""
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()  # (L, L)
    allowed = causal & mask[:, None, :]  # (B, L, L)
    return (allowed | torch.eye(length, dtype=torch.bool, device=mask.device))[:, None]  # (B, 1, L, L)


class CausalLM(nn.Module):
    """Decoder-only Transformer LM with tied input/output embeddings.

    Args:
        cfg: model shape.
    """

    config_class = CausalLMConfig
    # It answers a question by continuing ``<sot> question`` with no image: the blind floor of a bridge's VQA.
    vqa_kind = "generative"
    max_answer_tokens = 8

    def __init__(self, cfg: CausalLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, eps=cfg.ln_eps)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()

    @property
    def width(self) -> int:
        return self.cfg.width

    @property
    def max_positions(self) -> int:
        return self.cfg.context_length

    def decoder_layers(self) -> nn.ModuleList:
        return self.transformer.resblocks

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, width) word embeddings (positions are added in :meth:`forward_embeds`)."""
        return self.token_embedding(ids)

    def forward_embeds(self, embeds: torch.Tensor, mask: torch.Tensor | None = None, *, offset: int = 0,
                       before_block=None) -> torch.Tensor:
        """(B, L, width) input embeddings -> (B, L, vocab) logits.

        Args:
            embeds: word embeddings and/or soft prompts.
            mask: (B, L) bool, True at real positions; None: all real.
            offset: position of the first input (the LM objective's position jitter).
            before_block: ``f(i, hidden) -> hidden`` applied before decoder block ``i``.
        """
        length = embeds.shape[1]
        if offset < 0 or offset + length > self.cfg.context_length:
            raise ValueError(f"a sequence of {length} at position {offset} exceeds the LM's context_length {self.cfg.context_length}")
        x = embeds + self.positional_embedding[offset : offset + length].to(embeds.dtype)
        attn = causal_attention_mask(mask) if mask is not None else None
        for i, block in enumerate(self.transformer.resblocks):
            if before_block is not None:
                x = before_block(i, x)
            x = self.transformer._block(block, x, causal=attn is None, mask=attn)
        return F.linear(self.ln_final(x), self.token_embedding.weight.to(x.dtype))  # (B, L, vocab), tied

    def forward(self, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """(B, T) ids -> (B, T, vocab) logits (padding masked out)."""
        return self.forward_embeds(self.embed_tokens(tokens), tokens != self.cfg.pad_id, offset=offset)

    # -- the captioning interface (an LM is a captioner that ignores the image) ------------------
    def caption_memory(self, images: torch.Tensor) -> torch.Tensor:
        """An empty prefix (B, 0, width): the LM reads no image."""
        return self.token_embedding.weight.new_zeros(images.shape[0], 0, self.cfg.width)

    def caption_logits(self, memory: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) ``<sot> ...`` ids -> (B, T, vocab) next-token logits (``memory`` is empty)."""
        return forward_with_prefix(self, memory, tokens, self.cfg.pad_id)

    def decoding_spec(self, tokenizer):
        """``<sot> ... <eot>`` rows of up to ``context_length`` tokens (:mod:`coembed.generation.spec`)."""
        from coembed.generation.spec import DecodingSpec

        return DecodingSpec((tokenizer.sot_id,), self.cfg.eot_id, self.cfg.pad_id, self.cfg.context_length)

    def no_weight_decay(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.ndim < 2 or "embedding" in name}


def forward_with_prefix(lm: nn.Module, prefix: torch.Tensor, tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Logits of ``lm`` over [prefix embeddings; word embeddings of tokens], at the token positions only:
    prefix (B, P, width), tokens (B, T) -> (B, T, vocab). Padding tokens are masked out."""
    words = lm.embed_tokens(tokens)  # (B, T, width)
    mask = torch.cat([tokens.new_ones(prefix.shape[:2], dtype=torch.bool), tokens != pad_id], dim=1)  # (B, P + T)
    logits = lm.forward_embeds(torch.cat([prefix.to(words.dtype), words], dim=1), mask)  # (B, P + T, vocab)
    return logits[:, prefix.shape[1]:]


# ----------------------------------------------------------------------------- a bridge's LM section
LM_KINDS = ("", "coembed", "hf")


@dataclass(kw_only=True)
class LMConfig(LMShape):
    """The language model a bridge feeds: a small coembed LM or a local Hugging Face causal LM.

    ``kind`` "" means "not read from ``path`` yet": with a ``path`` it is resolved to "coembed" or "hf"
    (and the shape / ``hf`` config read from the folder); without one it is a random :class:`CausalLM`.
    A saved bridge stores the resolved section and all weights, so it reloads without the folder.
    """

    path: str = ""
    kind: str = ""
    frozen: bool = True
    hf: dict | None = None  # the Hugging Face folder's config.json (kind "hf")

    def __post_init__(self) -> None:
        if self.kind not in LM_KINDS:
            raise ValueError(f"lm.kind must be one of {LM_KINDS[1:]} (or empty, to read it from lm.path), got {self.kind!r}")
        if self.kind == "" and self.path:
            self._resolve()
        if self.kind == "hf" and not isinstance(self.hf, dict):
            raise ValueError("lm.hf must hold the Hugging Face config.json when lm.kind is 'hf'")
        if self.kind != "hf":
            check_lm_shape(self, "lm.")

    def _resolve(self) -> None:
        from coembed.towers.hf_causal_lm import read_hf_config

        kind, data = read_lm_source(self.path)
        if kind == "hf":
            self.kind, self.hf = "hf", read_hf_config(self.path)
            return
        for name in (f.name for f in fields(LMShape)):
            setattr(self, name, data[name])
        self.kind = "coembed"

    def small_lm(self) -> CausalLMConfig:
        """The :class:`CausalLMConfig` of a coembed LM section."""
        return CausalLMConfig(**{f.name: getattr(self, f.name) for f in fields(LMShape)}, position_jitter=False)


def read_lm_source(path: str) -> tuple[str, dict]:
    """("coembed", its model config) for a coembed ``causal_lm`` checkpoint or run folder, ("hf", {}) for a
    Hugging Face folder; ConfigError naming ``lm.path`` otherwise."""
    from coembed.checkpoint import read_json, resolve
    from coembed.errors import CheckpointError, ConfigError

    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"lm.path {path} is not a folder (a coembed causal_lm run/checkpoint or a Hugging Face causal LM)")
    try:
        config = read_json(resolve(folder) / "config.json")
    except CheckpointError as e:
        raise ConfigError(f"lm.path: {e}") from None
    if "model_type" in config and "format_version" not in config:
        return "hf", {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    if model.get("family") != "causal_lm":
        raise ConfigError(f"lm.path {path} is a coembed {model.get('family', 'unknown')!r} checkpoint; a bridge's LM must be "
                          "a causal_lm run (coembed train --preset lm-tiny) or a Hugging Face causal LM folder")
    return "coembed", model


def build_lm(cfg: LMConfig) -> nn.Module:
    """The LM module of a bridge (random weights; :func:`load_lm_weights` reads ``cfg.path``'s)."""
    if cfg.kind == "hf":
        from coembed.towers.hf_causal_lm import HFCausalLM

        return HFCausalLM(cfg.hf, frozen=cfg.frozen)
    lm = CausalLM(cfg.small_lm())
    if cfg.frozen:
        lm.requires_grad_(False)
    return lm


def load_lm_weights(lm: nn.Module, cfg: LMConfig) -> None:
    """Load ``cfg.path``'s weights into ``lm`` (nothing without a path); mismatches are an error listing them."""
    if not cfg.path:
        return
    if cfg.kind == "hf":
        lm.load_pretrained(cfg.path)
        return
    from coembed.checkpoint import check_keys, read_model_files

    files = read_model_files(cfg.path)
    check_keys(lm, files.state_dict, files.path)
    lm.load_state_dict(files.state_dict)


def lm_tokenizer(cfg: LMConfig):
    """The tokenizer the LM at ``cfg.path`` was trained with; None without a path (the trainer trains one)."""
    if not cfg.path:
        return None
    if cfg.kind == "hf":
        from coembed.errors import ConfigError
        from coembed.interop.hf_tokenizer import read_hf_tokenizer

        tokenizer = read_hf_tokenizer(Path(cfg.path))
        if tokenizer is None:
            raise ConfigError(f"lm.path {cfg.path} has no tokenizer.json")
        return tokenizer
    from coembed.checkpoint import TOKENIZER_FILE, resolve
    from coembed.tokenizer import Tokenizer

    return Tokenizer.from_file(resolve(cfg.path) / TOKENIZER_FILE)
