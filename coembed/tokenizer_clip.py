"""OpenAI CLIP's BPE tokenizer (49,408 tokens), giving the ids of OpenCLIP's ``SimpleTokenizer``.

The text is cleaned in Python exactly as OpenCLIP does: ``ftfy.fix_text``, HTML entities unescaped
twice, whitespace runs collapsed, lower-cased. The BPE itself runs in the ``tokenizers`` library:
CLIP's word pattern (``'s|'t|...|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``), byte-to-unicode mapping,
merges with the ``</w>`` end-of-word suffix. Rows are ``<start_of_text> ids... <end_of_text>``,
zero-padded to ``context_length``; longer texts are cut and end with ``<end_of_text>``.

ftfy is a dependency of coembed, as of OpenCLIP. In an environment installed without it, text is
NFC-normalised instead and a warning says once that ids can differ from OpenCLIP's on text ftfy
would repair (mojibake, curly quotes, ligatures, full-width forms, control characters).

As in OpenCLIP, the special tokens' own text inside a caption (``<end_of_text>``) is read as the
special token when the word pattern isolates it.

The word pattern runs in the Rust library's regex engine (Oniguruma), whose Unicode tables are
older than those of the ``regex`` package OpenCLIP splits with: 17,481 code points (measured with
regex 2026.11.19: all unassigned in Python 3.11's Unicode 14 except U+0345, which ``regex`` reads as
a letter under IGNORECASE) are letters to one and symbols to the other. Texts holding one of them
are split in Python with ``regex`` when it is installed (it comes with open_clip), as OpenCLIP does.

The vocabulary comes from the checkpoint folder (``bpe_simple_vocab_16e6.txt.gz``, a Hugging Face
folder's ``vocab.json`` + ``merges.txt`` or a ``tokenizer.json``) or from an installed ``open_clip``
package's copy, which is located without importing open_clip. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import os
import unicodedata
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Regex, Tokenizer as _HFTokenizer, models, pre_tokenizers

from coembed.errors import CheckpointError
from coembed.tokenizer import JsonBacked, check_batch

BPE_GZ = "bpe_simple_vocab_16e6.txt.gz"
PATTERN = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
OPENCLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
HF_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
NUM_MERGES = 49152 - 256 - 2  # the merges OpenAI's vocabulary uses out of the file's 262,144


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return dict(zip(bs, map(chr, cs)))


def _fix_text():
    try:
        import ftfy
    except ImportError:
        return None
    return ftfy.fix_text


@lru_cache(maxsize=1)
def _warn_no_ftfy() -> None:
    warnings.warn(
        "ftfy is not installed: the CLIP tokenizer NFC-normalises text instead of ftfy.fix_text, so ids can "
        "differ from OpenCLIP's on text ftfy repairs (mojibake, curly quotes, ligatures); pip install ftfy",
        stacklevel=3,
    )


def clean_text(text: str) -> str:
    """OpenCLIP's ``clean='lower'``: ftfy, HTML unescape (twice), whitespace collapse, lower-case."""
    fix = _fix_text()
    if fix is None:
        _warn_no_ftfy()
        text = unicodedata.normalize("NFC", text)
    else:
        text = fix(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


def installed_bpe_file() -> Path | None:
    """The BPE file inside an installed ``open_clip`` package (found without importing it)."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / BPE_GZ
        if candidate.is_file():
            return candidate
    return None


def read_bpe_gz(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, as SimpleTokenizer builds them."""
    try:
        lines = gzip.open(path).read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable CLIP BPE file ({e})") from None
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise CheckpointError(f"{path}: expected {NUM_MERGES} merges of two symbols")
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(OPENCLIP_SPECIALS)
    return {tok: i for i, tok in enumerate(vocab)}, merges  # type: ignore[return-value]


def read_vocab_merges(vocab_file: Path, merges_file: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A Hugging Face ``CLIPTokenizer``'s ``vocab.json`` and ``merges.txt``."""
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        lines = merges_file.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read CLIP vocabulary {vocab_file} / {merges_file}: {e}") from None
    merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
    return vocab, merges  # type: ignore[return-value]


@lru_cache(maxsize=1)
def _python_pattern():
    """OpenCLIP's compiled word pattern (``regex`` package, IGNORECASE), or None without ``regex``."""
    try:
        import regex
    except ImportError:
        return None
    return regex.compile(PATTERN, regex.IGNORECASE)


def _needs_python_split(text: str) -> bool:
    """Whether ``text`` holds a code point that Oniguruma and ``regex`` classify differently."""
    return not text.isascii() and any(c == "\u0345" or unicodedata.category(c) == "Cn" for c in text)


def _backend(vocab: dict[str, int], merges: list[tuple[str, str]]) -> _HFTokenizer:
    tok = _HFTokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tok


class ClipTokenizer(JsonBacked):
    """CLIP tokenizer with OpenCLIP's ids; rows padded with 0 to ``context_length`` as OpenCLIP pads them.

    Build one with :meth:`from_bpe_gz`, :meth:`from_vocab_merges`, :meth:`from_folder` or
    :meth:`from_str` (the JSON written by :meth:`to_str`).
    """

    kind = "clip"

    def __init__(self, backend: _HFTokenizer, *, source: str = "CLIP tokenizer") -> None:
        vocab = backend.get_vocab(with_added_tokens=False)
        names = next((pair for pair in (OPENCLIP_SPECIALS, HF_SPECIALS) if all(t in vocab for t in pair)), None)
        if names is None:
            raise CheckpointError(f"{source}: no start/end-of-text tokens {OPENCLIP_SPECIALS} or {HF_SPECIALS} in the vocabulary")
        self._tok = backend
        self._special = {name: vocab[name] for name in names}
        self._sot, self._eot = (vocab[n] for n in names)

    @classmethod
    def from_bpe_gz(cls, path: str | os.PathLike) -> ClipTokenizer:
        return cls(_backend(*read_bpe_gz(Path(path))), source=str(path))

    @classmethod
    def from_vocab_merges(cls, vocab_file: str | os.PathLike, merges_file: str | os.PathLike) -> ClipTokenizer:
        return cls(_backend(*read_vocab_merges(Path(vocab_file), Path(merges_file))), source=str(vocab_file))

    @classmethod
    def from_str(cls, text: str, *, source: str = "tokenizer JSON") -> ClipTokenizer:
        try:
            return cls(_HFTokenizer.from_str(text), source=source)
        except Exception as e:  # noqa: BLE001 - the Rust side raises a bare Exception
            raise CheckpointError(f"{source}: not a valid tokenizer ({e})") from None

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> ClipTokenizer:
        """The vocabulary in ``folder`` (BPE gz, or vocab.json + merges.txt), else the installed open_clip one."""
        folder = Path(folder)
        if (folder / BPE_GZ).is_file():
            return cls.from_bpe_gz(folder / BPE_GZ)
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            return cls.from_vocab_merges(folder / "vocab.json", folder / "merges.txt")
        return cls.default(near=folder)

    @classmethod
    def default(cls, near: Path | None = None) -> ClipTokenizer:
        """OpenAI's vocabulary from an installed open_clip package."""
        path = installed_bpe_file()
        if path is None:
            where = f" next to {near}" if near else ""
            raise CheckpointError(
                f"no CLIP BPE vocabulary found: put {BPE_GZ} (or Hugging Face vocab.json + merges.txt){where}, "
                "or pip install open_clip_torch, whose wheel ships it"
            )
        return cls.from_bpe_gz(path)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(_HFTokenizer.from_str(state["json"]))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=False)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def sot_id(self) -> int:
        return self._sot

    @property
    def eot_id(self) -> int:
        return self._eot

    def vocab_and_merges(self) -> tuple[dict[str, int], list[str]]:
        """Vocabulary and merges (``"a b"`` strings) as a Hugging Face folder stores them."""
        model = json.loads(self._tok.to_str())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        return model["vocab"], merges

    def special_tokens(self) -> tuple[str, str]:
        """The start and end token strings."""
        return tuple(self._special)  # type: ignore[return-value]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end tokens."""
        return self._encode_batch([text])[0]

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        cleaned = [clean_text(t) for t in texts]
        encodings = self._tok.encode_batch(cleaned, add_special_tokens=False)
        out = [enc.ids for enc in encodings]
        for i, text in enumerate(cleaned):
            if any(name in text for name in OPENCLIP_SPECIALS) or _needs_python_split(text):
                out[i] = self._encode_with_specials(text)
        return out

    def _pieces(self, text: str) -> list[str]:
        """Byte-mapped word-pattern pieces of ``text``, split by ``regex`` where Oniguruma would differ."""
        pattern = _python_pattern() if _needs_python_split(text) else None
        if pattern is None:
            return [piece for piece, _ in self._tok.pre_tokenizer.pre_tokenize_str(text)]
        table = bytes_to_unicode()
        return ["".join(table[b] for b in piece.encode("utf-8")) for piece in pattern.findall(text)]

    def _encode_with_specials(self, text: str) -> list[int]:
        """OpenCLIP maps a word-pattern piece that *is* a special token's text to that token."""
        ids: list[int] = []
        for piece in self._pieces(text):
            if piece in OPENCLIP_SPECIALS:  # plain ASCII: the byte mapping leaves it unchanged
                ids.append(self._sot if piece == OPENCLIP_SPECIALS[0] else self._eot)
            else:
                ids.extend(token.id for token in self._tok.model.tokenize(piece))
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of ``ids`` (cleaned form), skipping start, end and padding."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        kept = [int(i) for i in ids if int(i) not in (self._sot, self._eot, 0)]
        pieces = "".join(self._tok.id_to_token(i) or "" for i in kept)
        return _decode_bytes(pieces).replace("</w>", " ").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
        """Tokenize into a ``(B, context_length)`` LongTensor, exactly as OpenCLIP's tokenizer does."""
        batch = check_batch(texts, context_length)
        out = np.zeros((len(batch), context_length), dtype=np.int64)
        for i, ids in enumerate(self._encode_batch(batch)):
            row = [self._sot, *ids[: context_length - 2], self._eot]
            out[i, : len(row)] = row
        return torch.from_numpy(out)


def _decode_bytes(symbols: str) -> str:
    """Byte-level symbols (possibly with ``</w>``) back to text."""
    table = {c: b for b, c in bytes_to_unicode().items()}
    data = bytearray()
    for part in symbols.split("</w>"):
        data += bytes(table[c] for c in part if c in table)
        data += b"</w>"
    return bytes(data[: -len(b"</w>")]).decode("utf-8", errors="replace")
