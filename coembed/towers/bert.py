"""BERT encoder in the Hugging Face ``BertModel`` layout, written here so the core needs no transformers.

Embeddings (word + position + token type 0) -> LayerNorm -> post-LN blocks (``x = LN(x + attn(x))``,
``x = LN(x + ffn(x))``) with exact (erf) GELU and the config's LayerNorm epsilon (1e-12 for BERT and
MiniLM). Padding positions are masked out of every attention, so the states of real tokens do not
depend on how much padding a batch carries. Parameter names are Hugging Face's
(``embeddings.word_embeddings``, ``encoder.layer.N.attention.self.query``, ``pooler.dense`` ...), so a
folder's ``model.safetensors`` loads key for key. There is no dropout: the tower is run for inference
or frozen (LiT); fine-tuning it therefore trains without BERT's 0.1 dropout.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from coembed.checkpoint import check_keys
from coembed.errors import CheckpointError
from coembed.interop.weights import read_weights
from coembed.layers.mlp import make_activation

# Hugging Face ``hidden_act`` -> coembed activation ("gelu" in transformers is the erf form).
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Saved by older transformers versions; a constant ``arange`` buffer, not a weight.
POSITION_IDS = "embeddings.position_ids"


@dataclass(kw_only=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` the encoder uses (MiniLM-L6 defaults)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    pooler: bool = True  # the folder has BertPooler's dense layer (kept so that no tensor is dropped)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"bert.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"bert.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act not in HF_ACTIVATIONS:
            raise ValueError(f"bert.hidden_act must be one of {tuple(HF_ACTIVATIONS)}, got {self.hidden_act!r}")

    @classmethod
    def from_hf(cls, data: dict[str, Any], *, pooler: bool, source: str = "config.json") -> BertConfig:
        """From a Hugging Face ``config.json`` mapping; only the absolute-position BERT layout is accepted."""
        if data.get("model_type") != "bert":
            raise CheckpointError(f"{source}: model_type {data.get('model_type')!r} is not supported; "
                                  "only BERT-layout encoders (model_type 'bert', e.g. MiniLM, BERT, BGE) can be text towers")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"{source}: position_embedding_type {data['position_embedding_type']!r} is not supported (only 'absolute')")
        names = {f.name for f in fields(cls)} - {"pooler"}
        try:
            return cls(**{k: data[k] for k in names if k in data}, pooler=pooler)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{source}: {e}") from None


class BertEmbeddings(nn.Module):
    """Token ids (B, T) -> word + position + token-type-0 embeddings, layer-normalised (B, T, H)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(ids) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x + self.position_embeddings.weight[: ids.shape[1]])


class BertSelfAttention(nn.Module):
    """Separate query / key / value projections (Hugging Face's names), scaled dot-product attention."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, H); ``mask`` (B, 1, 1, T) True where a key is a real token."""
        B, T, H = x.shape
        q, k, v = (p(x).view(B, T, self.heads, H // self.heads).transpose(1, 2) for p in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, T, head_dim)
        return y.transpose(1, 2).reshape(B, T, H)


class DenseResidualNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)``: Hugging Face's ``BertSelfOutput`` and ``BertOutput``."""

    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = DenseResidualNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = make_activation(HF_ACTIVATIONS[cfg.hidden_act])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    """One post-LN block: attention, then the feed-forward, each followed by residual + LayerNorm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = DenseResidualNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x, mask)
        return x


class BertPooler(nn.Module):
    """``tanh(dense(first token))``: Hugging Face's ``pooler_output``."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(states[:, 0]))


class BertModel(nn.Module):
    """Token ids -> last hidden states, as ``transformers.BertModel(...).last_hidden_state``.

    Args:
        cfg: encoder shape.
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg) if cfg.pooler else None
        self.apply(_init_weights)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``ids`` (B, T) and ``attention_mask`` (B, T), 1 for real tokens -> states (B, T, H)."""
        if ids.shape[1] > self.cfg.max_position_embeddings:
            raise ValueError(f"tokens have length {ids.shape[1]} > max_position_embeddings {self.cfg.max_position_embeddings}")
        mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): which keys each query may see
        return self.encoder(self.embeddings(ids), mask)


def _init_weights(module: nn.Module) -> None:
    # BERT's initialisation (normal 0.02, LayerNorm 1/0); pretrained weights normally replace it.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear):
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------- Hugging Face folders
def _weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no {' or '.join(WEIGHT_FILES)} in the folder")


def read_bert_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The encoder tensors of a BERT folder, in :class:`BertModel` names.

    A ``bert.`` prefix (``BertFor...`` checkpoints) is removed and the constant ``position_ids``
    buffer dropped; every other tensor is kept, so task heads show up as unexpected keys.
    """
    path = _weights_file(Path(folder))
    sd = read_weights(path)
    if sd and any(k.startswith("bert.") for k in sd):
        sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    ids = sd.pop(POSITION_IDS, None)
    if ids is not None and not torch.equal(ids.flatten(), torch.arange(ids.numel(), dtype=ids.dtype)):
        raise CheckpointError(f"{path}: {POSITION_IDS} is not 0, 1, 2 ...; custom position ids are not supported")
    return sd


def read_bert_config(folder: str | os.PathLike) -> BertConfig:
    """The :class:`BertConfig` of a Hugging Face BERT folder (``config.json`` + the weights' key names)."""
    folder = Path(folder)
    source = folder / "config.json"
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no config.json; a Hugging Face text tower needs its folder's config.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{source}: cannot read ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{source} must hold a JSON object")
    keys = _weight_names(_weights_file(folder))
    return BertConfig.from_hf(data, pooler=any(k.removeprefix("bert.").startswith("pooler.") for k in keys), source=str(source))


def _weight_names(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path} is not a valid safetensors file: {e}") from None
    return list(read_weights(path))


def load_bert_weights(model: BertModel, folder: str | os.PathLike) -> None:
    """Copy a folder's weights into ``model``; missing, unexpected or mis-shaped tensors are an error listing them."""
    sd = read_bert_state(folder)
    check_keys(model, sd, Path(folder))
    model.load_state_dict(sd)
