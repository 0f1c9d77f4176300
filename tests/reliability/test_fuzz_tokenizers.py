"""Property-based fuzzing of both tokenizers (hypothesis) against invariants and naive references.

- ``coembed.tokenizer.Tokenizer`` (byte-level BPE trained on shapes-style captions): any ``str``
  (every Unicode category, controls, surrogates, long strings) encodes without raising into
  ``<sot> ids... <eot>`` rows of at most ``context_length`` with ordinary ids in vocabulary range,
  truncated exactly as ``[sot] + encode(x)[:ctx - 2] + [eot]``; ``decode(encode(x))`` equals the
  text after the normalisation the module promises (NFKC, whitespace runs to one space, strip,
  lower-case), computed here in plain Python.
- ``coembed.tokenizer_clip.ClipTokenizer``: ids equal to OpenCLIP's ``SimpleTokenizer`` on every
  generated string and context length, and ``decode`` equal to OpenCLIP's decode.

Hypothesis runs derandomized (the same examples on every run, so CI is reproducible) with no
deadline and the stated ``max_examples``; ``CASES`` counts the examples each property really ran.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from coembed.tokenizer import SPECIAL_TOKENS, Tokenizer
from tests.test_tokenizer import make_captions

CASES: Counter[str] = Counter()


def fuzz(max_examples: int):
    """The CI profile: reproducible (derandomize), no per-example deadline, a fixed example budget."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# Any code point, surrogates included (a Python str may hold them; json.loads makes them from "\ud800").
ANY_CHAR = st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)
# Characters where tokenizers usually break: controls, format chars (bidi, zero width), separators,
# combining marks, compatibility forms NFKC rewrites, case-changing letters, HTML-ish punctuation.
TRICKY_CHAR = st.one_of(
    st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Me", "Lt", "So", "Sk", "No", "Nl"]),
    st.sampled_from(list("İıßẞǅﬁﬂＡ１\u00a0\u2003\u200b\u202e\u0301\ufeff<>&;#'\"") + ["&amp;", "<eot>", "<sot>",
                                                                                    "<end_of_text>", "<start_of_text>"]),
)
WORDY = st.lists(st.sampled_from(["a", "red", "circle", "Photo", "of", "the", "LEFT", "above", "42", "🐱", " ", "  ",
                                  "\t", "\n", "!", "...", "東京", "café"]), max_size=60).map("".join)
TEXTS = st.one_of(st.text(ANY_CHAR, max_size=80), st.lists(TRICKY_CHAR, max_size=40).map("".join), WORDY,
                  st.text(ANY_CHAR, min_size=300, max_size=1500))
CONTEXT = st.integers(min_value=2, max_value=80)


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train(make_captions(2000), vocab_size=2048)


# Unicode's White_Space property (PropList.txt), the whitespace of the Rust regex and strip the
# tokenizer normalises with. Python's str.isspace / re's \s also count U+001C-U+001F (information
# separators), which Unicode does not call whitespace: the tokenizer keeps those as characters.
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def normalised(text: str) -> str:
    """The normalisation ``coembed.tokenizer`` documents, written in plain Python as the reference."""
    text = re.sub("[\ud800-\udfff]", "\ufffd", text)  # what the tokenizer does with lone surrogates
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(f"[{WHITE_SPACE}]+", " ", text).strip(" ")  # every run is one space now
    return text.lower()


# ----------------------------------------------------------------------------- coembed BPE tokenizer
@fuzz(400)
@given(text=TEXTS, context_length=CONTEXT)
def test_bpe_rows_are_well_formed_and_truncated_exactly(bpe: Tokenizer, text: str, context_length: int) -> None:
    CASES["bpe rows"] += 1
    row = bpe(text, context_length=context_length)
    ids = bpe.encode(text)
    assert row.dtype == torch.long and row.shape == (1, min(context_length, len(ids) + 2))
    assert row[0].tolist() == [bpe.sot_id, *ids[: context_length - 2], bpe.eot_id]
    # Ordinary ids only between the specials: caption text can never produce a special id.
    assert all(len(SPECIAL_TOKENS) <= i < bpe.vocab_size for i in ids)


@pytest.fixture(scope="module")
def unicode_version_gap() -> frozenset[str]:
    """Characters whose NFKC or lower-case form differs between Python's Unicode tables (14.0 on
    Python 3.11) and the Rust crates' newer ones inside ``tokenizers`` (127 measured here). The
    tokenizer is consistent with itself (training and inference use the same ``tokenizer.json``);
    only the plain-Python reference cannot speak for these, so round-trip examples avoid them."""
    from tokenizers import normalizers

    nfkc, lower = normalizers.NFKC(), normalizers.Lowercase()
    chars = (chr(cp) for cp in range(0x110000) if not 0xD800 <= cp < 0xE000)
    return frozenset(c for c in chars if nfkc.normalize_str(c) != unicodedata.normalize("NFKC", c)
                     or lower.normalize_str(c) != c.lower())


@fuzz(400)
@given(text=TEXTS)
def test_bpe_decode_of_encode_is_the_normalised_text(bpe: Tokenizer, unicode_version_gap, text: str) -> None:
    assume(not unicode_version_gap.intersection(text))
    CASES["bpe round trip"] += 1
    assert bpe.decode(bpe.encode(text)) == normalised(text)


@fuzz(100)
@given(texts=st.lists(TEXTS, min_size=1, max_size=6), context_length=CONTEXT)
def test_bpe_batch_rows_equal_single_rows_padded(bpe: Tokenizer, texts: list[str], context_length: int) -> None:
    CASES["bpe batch"] += 1
    batch = bpe(texts, context_length=context_length)
    assert batch.shape[0] == len(texts) and batch.shape[1] <= context_length
    for i, text in enumerate(texts):
        single = bpe(text, context_length=context_length)[0]
        assert batch[i, : len(single)].tolist() == single.tolist()
        assert not batch[i, len(single):].any()  # padding is <pad> (0) only


# ----------------------------------------------------------------------------- CLIP tokenizer vs OpenCLIP
@pytest.fixture(scope="module")
def clip_pair():
    open_clip = pytest.importorskip("open_clip")
    from coembed.tokenizer_clip import ClipTokenizer

    return ClipTokenizer.default(), open_clip.get_tokenizer("ViT-B-32")


# Text with a lone surrogate in it (OpenCLIP's ftfy step turns it into U+FFFD; ours must match).
WITH_SURROGATE = st.tuples(TEXTS, st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, codec=None), TEXTS).map("".join)
# Code points the Rust regex and the regex package classify differently (found by this fuzzing).
UNICODE_GAP = st.sampled_from([":\U00012550", "a\u0345b", "x\ua7ce y", "1\u0c5c2", "\U00010940!", "ok \u088f."])


@fuzz(300)
@given(text=st.one_of(TEXTS, WITH_SURROGATE, UNICODE_GAP), context_length=CONTEXT)
def test_clip_ids_equal_openclip(clip_pair, text: str, context_length: int) -> None:
    CASES["clip parity"] += 1
    ours, ref = clip_pair
    got = ours(text, context_length=context_length)
    assert got.shape == (1, context_length)
    assert got.tolist() == ref(text, context_length=context_length).tolist()
    assert got[0, 0] == ours.sot_id and ours.eot_id in got[0].tolist()
    assert all(0 <= i < ours.vocab_size for i in got[0].tolist())


@fuzz(150)
@given(text=st.one_of(TEXTS, UNICODE_GAP))
def test_clip_decode_equals_openclip_decode(clip_pair, text: str) -> None:
    CASES["clip decode"] += 1
    ours, ref = clip_pair
    ids = ours.encode(text)
    specials = (ours.sot_id, ours.eot_id, 0)
    assert ours.decode(ids) == ref.decode([i for i in ids if i not in specials]).strip()


def test_zz_report_cases() -> None:
    """Print the examples run per property (pytest -s shows it; the report quotes these totals)."""
    print("\nfuzz cases (tokenizers):", dict(CASES), "total", sum(CASES.values()))
