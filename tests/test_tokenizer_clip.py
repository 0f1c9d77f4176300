"""The CLIP tokenizer against OpenCLIP's own ``SimpleTokenizer`` (the reference), offline."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from coembed.tokenizer_clip import ClipTokenizer, clean_text

open_clip = pytest.importorskip("open_clip")

WORDS = ["a", "photo", "of", "the", "cat", "Dog", "RED", "circle", "it's", "WE'LL", "they'd", "don't", "I'M",
         "naïve", "café", "Zürich", "straße", "İstanbul", "ǅemal", "Ωmega", "東京", "北京市", "한국어", "日本語テキスト",
         "Москва", "العربية", "עברית", "हिन्दी", "ไทย", "ελληνικά", "x²", "½", "Ⅻ", "٣٤٥", "2024", "3.14159",
         "e-mail", "co-op", "C++", "node.js", "@user", "#hashtag", "http://example.com/a?b=c&d=e", "snake_case"]
EMOJI = ["😀", "🐱", "👍🏽", "👩‍👩‍👧", "🇫🇷", "❤️", "✨", "🤖🤖🤖", "☃", "⚽️"]
HTML = ["&amp;", "&lt;b&gt;", "&quot;", "&#39;", "&#x27;", "&nbsp;", "&amp;amp;", "&eacute;", "&copy;", "&hellip;", "&unknown;"]
PUNCT = ["!!!", "???", "...", "?!?!", "---", "''", '""', "((()))", "[...]", "~~~", "***", "…", "—", "«»", "¿¡", ";;", "_"]
ODD = ["cafÃ©", "â€œquotedâ€\x9d", "“curly”", "‘single’", "ﬁne ﬂow", "ＡＢＣ１２３", "tab\there", "new\nline",
       "nb\u00a0sp", "em\u2003space", "zero\u200bwidth", "ctrl\x07bell", "\x1b[31mred\x1b[0m", "soft\u00adhyphen",
       "<start_of_text>", "<end_of_text>", "x<end_of_text>y", "!<end_of_text>", "<|endoftext|>", "e\u0301", "Å"]
POOLS = [WORDS, WORDS, WORDS, EMOJI, HTML, PUNCT, ODD]


def generated_strings(n: int = 1200, seed: int = 0) -> list[str]:
    """``n`` deterministic strings mixing words, scripts, emoji, entities, punctuation runs and oddities."""
    rng = random.Random(seed)
    out = ["", " ", "   \t\n  ", "a", "A" * 400, "word " * 120, "!" * 200, "😀" * 90, "&amp;" * 60]
    while len(out) < n:
        length = rng.choice([1, 2, 3, 5, 8, 13, 40, 150])
        parts = [rng.choice(rng.choice(POOLS)) for _ in range(length)]
        sep = rng.choice([" ", " ", "", "  ", "\t", ", "])
        text = sep.join(parts)
        if rng.random() < 0.2:
            text = text.upper()
        out.append(text)
    return out


@pytest.fixture(scope="module")
def pair() -> tuple[ClipTokenizer, object]:
    return ClipTokenizer.default(), open_clip.get_tokenizer("ViT-B-32")


def test_vocabulary_and_special_ids(pair) -> None:
    ours, _ = pair
    assert (ours.vocab_size, ours.sot_id, ours.eot_id, ours.pad_id) == (49408, 49406, 49407, 0)


def test_ids_identical_to_openclip_on_generated_strings(pair) -> None:
    ours, ref = pair
    texts = generated_strings()
    assert len(texts) >= 1000 and any(len(t) > 1000 for t in texts)
    got, want = ours(texts), ref(texts)
    bad = [texts[i] for i in range(len(texts)) if not torch.equal(got[i], want[i])]
    assert not bad, f"{len(bad)} strings differ, e.g. {bad[:3]!r}"


@pytest.mark.parametrize("context_length", [5, 16, 77])
def test_truncation_keeps_end_token_like_openclip(pair, context_length: int) -> None:
    ours, ref = pair
    texts = ["short", "a much longer caption " * 20]
    got = ours(texts, context_length=context_length)
    assert torch.equal(got, ref(texts, context_length=context_length))
    assert got.shape == (2, context_length) and got[1, -1] == 49407


def test_serialised_tokenizer_gives_the_same_ids(pair) -> None:
    ours, _ = pair
    texts = generated_strings(200, seed=1)
    assert torch.equal(ClipTokenizer.from_str(ours.to_str())(texts), ours(texts))
    assert torch.equal(pickle.loads(pickle.dumps(ours))(texts), ours(texts))


def test_clean_text_matches_openclip() -> None:
    from open_clip.tokenizer import _clean_lower

    for text in generated_strings(300, seed=2):
        assert clean_text(text) == _clean_lower(text)


def test_decode_round_trips_cleaned_text(pair) -> None:
    ours, _ = pair
    assert ours.decode(ours("A Photo of a CAT!")[0]) == "a photo of a cat !"
