"""Byte-level BPE tokenizer for captions, trained on the user's own data.

Wraps a ``tokenizers.Tokenizer``: NFKC + whitespace collapse + strip + lower-case normalisation, GPT-2
style byte-level pre-tokenisation (splits words, numbers, punctuation runs and whitespace) and a BPE
model whose initial alphabet holds all 256 byte symbols, so any Unicode text (emoji, RTL scripts,
control characters) encodes without ``<unk>``.

The five special tokens have fixed ids: ``<pad>`` = 0, ``<sot>`` = 1, ``<eot>`` = 2, ``<unk>`` = 3,
``<mask>`` = 4. They live only in the BPE vocabulary, not as "added tokens": the text ``"<eot>"``
inside a caption is therefore encoded as ordinary characters and can never inject a special id.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as _HFTokenizer

from coembed.errors import CheckpointError
from coembed.io import atomic_write_text

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<sot>", "<eot>", "<unk>", "<mask>")
PAD_ID, SOT_ID, EOT_ID, UNK_ID, MASK_ID = range(len(SPECIAL_TOKENS))
# Smallest vocabulary that can exist: the special tokens plus one symbol per byte.
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
# A Python str can hold surrogate code points (json.loads accepts "\ud800"); they are not valid
# UTF-8, so the Rust tokenizer rejects them.
_SURROGATES = re.compile("[\ud800-\udfff]")


def _empty_tokenizer() -> _HFTokenizer:
    """An untrained tokenizer with the normalisation and pre-tokenisation pipeline."""
    tok = _HFTokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFKC(),
            normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Strip(),
            normalizers.Lowercase(),
        ]
    )
    # add_prefix_space: the first word gets the same "Ġword" token as words after a space.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _replace_surrogates(texts: list[str]) -> list[str]:
    return [_SURROGATES.sub("\ufffd", t) for t in texts]


def _check_special_ids(tok: _HFTokenizer, source: str) -> None:
    for expected, token in enumerate(SPECIAL_TOKENS):
        got = tok.token_to_id(token)
        if got != expected:
            raise CheckpointError(f"{source}: special token {token!r} has id {got}, expected {expected}")


def check_batch(texts: str | Sequence[str], context_length: int) -> list[str]:
    """The batch as a list of captions, after checking what every tokenizer's ``__call__`` needs.

    Raises:
        ValueError: ``context_length`` < 2 or an empty batch.
        TypeError: an element of ``texts`` is not a str.
    """
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (room for <sot> and <eot>), got {context_length}")
    batch = [texts] if isinstance(texts, str) else list(texts)
    if not batch:
        raise ValueError("texts must contain at least one caption, got an empty sequence")
    for i, text in enumerate(batch):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    return batch


class JsonBacked:
    """Serialisation shared by the tokenizers that wrap a ``tokenizers.Tokenizer`` in ``self._tok``."""

    _tok: _HFTokenizer

    def to_str(self) -> str:
        """The tokenizer as JSON text (the content of ``tokenizer.json``)."""
        return self._tok.to_str()

    def save(self, path: str | os.PathLike) -> None:
        """Write ``tokenizer.json`` to ``path`` atomically."""
        atomic_write_text(path, self.to_str())

    def __getstate__(self) -> dict[str, Any]:
        return {"json": self.to_str()}


class Tokenizer(JsonBacked):
    """Caption tokenizer producing ``<sot> ... <eot>`` rows padded with ``<pad>`` (id 0).

    Build one with :meth:`train`, :meth:`from_file` or :meth:`from_str`. Instances hold no mutable
    state after construction, so one tokenizer can be shared by threads and pickled into
    ``DataLoader`` workers.
    """

    def __init__(self, tok: _HFTokenizer, *, source: str = "tokenizer") -> None:
        """Wrap an already trained ``tokenizers.Tokenizer``.

        Args:
            tok: A tokenizer whose vocabulary has the special tokens at ids 0-4.
            source: Name used in error messages (a file path, for instance).

        Raises:
            CheckpointError: the special tokens are missing or have other ids.
        """
        _check_special_ids(tok, source)
        self._tok = tok

    # ------------------------------------------------------------------ construction
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
        """Learn a BPE vocabulary from ``texts``.

        Training stops at ``vocab_size`` or earlier, when no pair of symbols occurs at least
        ``min_frequency`` times; the size reached is reported by :attr:`vocab_size`. Training is
        deterministic: the same texts give the same vocabulary.

        Args:
            texts: Captions (any iterable, read once).
            vocab_size: Upper bound on the vocabulary size, special tokens and bytes included.
            min_frequency: Minimum count of a pair for it to be merged.

        Raises:
            ValueError: ``vocab_size`` below the 261 fixed symbols or ``min_frequency`` < 1.
        """
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must be >= {MIN_VOCAB_SIZE} (5 special tokens + 256 byte symbols), "
                f"got {vocab_size}"
            )
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok = _empty_tokenizer()
        tok.train_from_iterator(texts, trainer=trainer)
        # The trainer also registers the specials as "added tokens", which are matched in raw
        # text; drop them so a caption containing "<eot>" cannot produce the eot id.
        config = json.loads(tok.to_str())
        config["added_tokens"] = []
        return cls(_HFTokenizer.from_str(json.dumps(config)), source="trained tokenizer")

    @classmethod
    def from_str(cls, text: str, *, source: str = "tokenizer JSON") -> Tokenizer:
        """Load from the JSON text written by :meth:`to_str`.

        Raises:
            CheckpointError: the text is not a valid tokenizer or has other special-token ids.
        """
        try:
            tok = _HFTokenizer.from_str(text)
        except Exception as e:  # tokenizers raises plain Exception on malformed JSON
            raise CheckpointError(f"{source}: not a valid tokenizer JSON ({e})") from None
        return cls(tok, source=source)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Tokenizer:
        """Load a ``tokenizer.json`` written by :meth:`save`.

        Raises:
            CheckpointError: the file is missing, unreadable, invalid, or has other special-token ids.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: cannot read tokenizer file ({e})") from None
        return cls.from_str(text, source=str(path))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._tok = _HFTokenizer.from_str(state["json"])

    # ------------------------------------------------------------------ properties
    @property
    def vocab_size(self) -> int:
        """Number of token ids; every id is in ``range(vocab_size)``."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>`` (0), used to pad rows to the batch's longest."""
        return PAD_ID

    @property
    def sot_id(self) -> int:
        """Id of ``<sot>`` (1), first token of every row."""
        return SOT_ID

    @property
    def eot_id(self) -> int:
        """Id of ``<eot>`` (2), last non-pad token of every row (pool text features here)."""
        return EOT_ID

    @property
    def unk_id(self) -> int:
        """Id of ``<unk>`` (3); byte-level BPE never produces it for text."""
        return UNK_ID

    @property
    def mask_id(self) -> int:
        """Id of ``<mask>`` (4), reserved for masked-language objectives."""
        return MASK_ID

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (empty list for empty text)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._encode_batch([text])[0]

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        try:
            encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        except TypeError:
            # Only surrogates get here (callers check types); cleaning every batch up front
            # would cost a regex pass over all texts for a case that almost never occurs.
            encodings = self._tok.encode_batch(_replace_surrogates(texts), add_special_tokens=False)
        return [enc.ids for enc in encodings]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of ``ids`` (normalised: lower-case, collapsed whitespace), skipping special tokens."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        kept = [int(i) for i in ids if not 0 <= int(i) < len(SPECIAL_TOKENS)]
        text = self._tok.decode(kept, skip_special_tokens=False)
        # The byte-level pre-tokenizer prepended one space; normalised text never starts with one.
        return text[1:] if text.startswith(" ") else text

    def __call__(self, texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
        """Tokenize a batch into a ``(B, T)`` LongTensor of ``<sot> ids... <eot>`` rows.

        Rows are padded with ``pad_id`` (0) to the longest row of the batch, so
        ``T <= context_length``. Longer texts are truncated, keeping ``<eot>`` as the last token.

        Args:
            texts: One caption (gives ``B = 1``) or a sequence of captions.
            context_length: Maximum row length, specials included (at least 2).

        Raises:
            ValueError: ``context_length`` < 2 or an empty batch.
            TypeError: an element of ``texts`` is not a str.
        """
        batch = check_batch(texts, context_length)
        keep = context_length - 2
        rows = [ids[:keep] for ids in self._encode_batch(batch)]
        out = np.zeros((len(rows), max(map(len, rows)) + 2), dtype=np.int64)
        out[:, 0] = SOT_ID
        for i, ids in enumerate(rows):
            out[i, 1 : len(ids) + 1] = ids
            out[i, len(ids) + 1] = EOT_ID
        return torch.from_numpy(out)
