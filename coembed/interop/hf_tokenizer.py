"""A Hugging Face folder's ``tokenizer.json`` as a coembed tokenizer (SigLIP and other non-CLIP vocabularies).

Rows are padded to ``context_length`` with the folder's pad token and truncated to it, with the
special tokens the tokenizer's post-processor adds, as ``tokenizer(texts, padding="max_length",
truncation=True, max_length=context_length)`` does in transformers. A SentencePiece-only folder
(``spiece.model`` without ``tokenizer.json``, as SigLIP checkpoints are published) cannot be read
without the sentencepiece library: the model still loads, with no tokenizer and a warning.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer as _HFTokenizer

from coembed.errors import CheckpointError
from coembed.tokenizer import JsonBacked, _replace_surrogates, check_batch


class HFTokenizer(JsonBacked):
    """``tokenizers`` JSON + a pad id; call it like coembed's other tokenizers."""

    kind = "hf"

    def __init__(self, backend: _HFTokenizer, pad_id: int, *, source: str = "tokenizer.json") -> None:
        self._tok = backend
        self._pad = pad_id
        self._tok.no_padding()
        self._tok.no_truncation()

    @classmethod
    def from_str(cls, text: str, pad_id: int, *, source: str = "tokenizer JSON") -> HFTokenizer:
        try:
            return cls(_HFTokenizer.from_str(text), pad_id, source=source)
        except Exception as e:  # noqa: BLE001 - the Rust side raises a bare Exception
            raise CheckpointError(f"{source}: not a valid tokenizer ({e})") from None

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "pad": self._pad}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(_HFTokenizer.from_str(state["json"]), state["pad"])

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._pad

    def token_id(self, token: str) -> int | None:
        """The id of a vocabulary entry (e.g. ``"[MASK]"``), None if it has none."""
        return self._tok.token_to_id(token)

    def __call__(self, texts: str | Sequence[str], context_length: int = 64) -> torch.Tensor:
        """``(B, context_length)`` ids: specials added, truncated, padded with ``pad_id``."""
        batch = check_batch(texts, context_length)
        tok = _HFTokenizer.from_str(self._tok.to_str())  # a copy: padding settings are not thread-safe state
        tok.enable_truncation(max_length=context_length)
        tok.enable_padding(length=context_length, pad_id=self._pad)
        try:
            encodings = tok.encode_batch(batch)
        except TypeError:  # lone surrogates (json.loads accepts "\ud800") are not UTF-8; the Rust side refuses them
            encodings = tok.encode_batch(_replace_surrogates(batch))
        return torch.tensor([enc.ids for enc in encodings], dtype=torch.long)


def _pad_id(folder: Path, backend: _HFTokenizer) -> int:
    config_file = folder / "tokenizer_config.json"
    token = None
    if config_file.is_file():
        try:
            token = json.loads(config_file.read_text(encoding="utf-8")).get("pad_token")
        except (OSError, json.JSONDecodeError):
            token = None
    if isinstance(token, dict):
        token = token.get("content")
    found = backend.token_to_id(token) if isinstance(token, str) else None
    return 0 if found is None else found


def read_hf_tokenizer(folder: Path) -> HFTokenizer | None:
    """The folder's ``tokenizer.json``, or None (with a warning) when it has none."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        extra = " (it has only spiece.model, which needs the sentencepiece library)" if (folder / "spiece.model").is_file() else ""
        warnings.warn(f"{folder}: no tokenizer.json{extra}; the model loads without a tokenizer", stacklevel=3)
        return None
    backend = HFTokenizer.from_str(path.read_text(encoding="utf-8"), 0, source=str(path))._tok
    return HFTokenizer(backend, _pad_id(folder, backend), source=str(path))
