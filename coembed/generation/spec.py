"""What a decoder needs to know about a captioner: how a row starts, where it ends, what pads it and how
long it may grow (:class:`DecodingSpec`), resolved once per model and tokenizer by :func:`decoding_spec`.

Three kinds of captioners provide one:

- a model whose config has a ``text`` section (CoCa, the BLIP decoder, the BLIP VQA answerer): rows
  start with ``text.sot_id``, end with ``text.eot_id``, are padded with ``text.pad_id`` and reach at most
  ``text.context_length`` tokens;
- a model with a ``decoding_spec(tokenizer)`` method (the causal LM and the bridges,
  :mod:`coembed.models.causal_lm`, :mod:`coembed.models.bridging`), which reads its ids from its LM
  section and the tokenizer: with a coembed LM the same ``<sot> ... <eot>`` rows; with a Hugging Face LM
  the special tokens its tokenizer's post-processor adds (GPT-2's adds none: no start, no end), see
  :func:`tokenizer_specials`.

Where the start is empty, a decoder must be given a prompt (the caption continues it); where there is no
end token the LM never learned to stop, so decoding runs to ``max_length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class DecodingSpec:
    """The resolved decoding ids and length of one captioner.

    Attributes:
        start_ids: what every row begins with before any prompt (``(<sot>,)``; ``()`` for GPT-2).
        eos_id: the end token, None when the model never emits one (decode to ``max_length``).
        pad_id: what follows the end token in a finished row.
        max_length: the longest row, start, prompt and end included.
    """

    start_ids: tuple[int, ...]
    eos_id: int | None
    pad_id: int
    max_length: int

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")

    @property
    def stop_id(self) -> int:
        """``eos_id``, or -1 (never produced) for the decoders, which take an int."""
        return -1 if self.eos_id is None else self.eos_id

    def prompt_ids(self, tokenizer, prompt: str | None) -> list[int]:
        """``start_ids`` followed by the prompt's word ids (no special tokens); ValueError naming
        ``prompt`` when the row would be empty (a decoder needs a first token to condition on)."""
        ids = list(self.start_ids) + (encode_words(tokenizer, prompt) if prompt else [])
        if not ids:
            raise ValueError("prompt is required: this model's tokenizer adds no start token, so decoding "
                             "starts from a prompt's words (e.g. prompt 'a')")
        if len(ids) >= self.max_length:
            raise ValueError(f"prompt has {len(ids)} tokens with the start; it must leave room in max_length {self.max_length}")
        return ids

    def end_of(self, row: Sequence[int]) -> int:
        """The index of the first ``eos_id`` in ``row`` (its length when there is none)."""
        row = list(row)
        return row.index(self.eos_id) if self.eos_id is not None and self.eos_id in row else len(row)


def decoding_spec(model: nn.Module, tokenizer=None) -> DecodingSpec:
    """The :class:`DecodingSpec` of a captioner (see the module doc).

    Raises:
        ValueError: the model provides none, or needs a tokenizer and got None.
    """
    own = getattr(model, "decoding_spec", None)
    if callable(own):
        if tokenizer is None:
            raise ValueError(f"{type(model).__name__} reads its decoding ids from its tokenizer: pass the tokenizer")
        return own(tokenizer)
    text = getattr(getattr(model, "cfg", None), "text", None)
    if text is None or not all(hasattr(text, k) for k in ("sot_id", "eot_id", "pad_id", "context_length")):
        raise ValueError(f"{type(model).__name__} has no decoding ids (no cfg.text with sot/eot/pad ids and no decoding_spec)")
    return DecodingSpec((text.sot_id,), text.eot_id, text.pad_id, text.context_length)


def _backend(tokenizer):
    """A ``tokenizers.Tokenizer`` copy of a JSON-backed tokenizer (coembed's and Hugging Face's)."""
    from tokenizers import Tokenizer as Backend

    return Backend.from_str(tokenizer.to_str())


def encode_words(tokenizer, text: str) -> list[int]:
    """The ids of ``text`` without special tokens (``tokenizer.encode`` where it exists)."""
    if callable(getattr(tokenizer, "encode", None)):
        return list(tokenizer.encode(text))
    return _backend(tokenizer).encode(text, add_special_tokens=False).ids


def decode_ids(tokenizer, ids: Sequence[int]) -> str:
    """The text of ``ids``, special tokens dropped (``tokenizer.decode`` where it exists)."""
    if callable(getattr(tokenizer, "decode", None)):
        return tokenizer.decode(list(ids)).strip()
    return _backend(tokenizer).decode(list(ids), skip_special_tokens=True).strip()


def tokenizer_specials(tokenizer) -> tuple[tuple[int, ...], int | None]:
    """The special ids a tokenizer's post-processor puts before a text and the one it puts last (or None).

    Read off an encoding of a short text with and without special tokens: whatever the tokenizer adds
    is what the LM saw around every caption in training, so it is what decoding must start with and stop
    at (GPT-2: nothing and None; a Llama-style tokenizer: ``(<s>,)`` and None; BERT-style: both).
    """
    backend = _backend(tokenizer)
    plain = backend.encode("a", add_special_tokens=False).ids
    full = backend.encode("a", add_special_tokens=True).ids
    for lead in range(len(full) - len(plain) + 1):
        if full[lead : lead + len(plain)] == plain:
            tail = full[lead + len(plain) :]
            return tuple(full[:lead]), (tail[-1] if tail else None)
    return (), None
