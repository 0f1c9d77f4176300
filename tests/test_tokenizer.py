from __future__ import annotations

import hashlib
import json
import pickle
import random
import subprocess
import sys
import textwrap
import unicodedata

import pytest
import torch

from coembed.errors import CheckpointError
from coembed.tokenizer import MIN_VOCAB_SIZE, Tokenizer

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
RELATIONS = ["to the left of", "to the right of", "above", "below"]


def make_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)

    def obj() -> str:
        return f"a {rng.choice(['small', 'large'])} {rng.choice(COLORS)} {rng.choice(SHAPES)}"

    def caption() -> str:
        if rng.random() < 0.5:
            return f"{obj()} {rng.choice(RELATIONS)} {obj()}."
        return f"a photo of {obj()}, on white!"

    return [caption() for _ in range(n)]


CORPUS = make_captions(2000)
UNICODE_TEXTS = [
    "a dog 🐕 running 🏃‍♀️ in the park 🌳",
    "مرحبا بالعالم، قطة سوداء",  # Arabic (RTL)
    "כלב חום רץ בפארק",  # Hebrew (RTL)
    "null\x00byte and \x07 bell",
    "e\u0301 combining accent, 中文字幕, ελληνικά, ßtraße",
    "\u200b\u200e\u202e zero width and bidi overrides",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(CORPUS, vocab_size=4096)


def test_special_token_ids(tok):
    assert (tok.pad_id, tok.sot_id, tok.eot_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    inner = tok._tok  # the ids must be those of the vocabulary itself, not only the properties
    assert [inner.token_to_id(t) for t in ["<pad>", "<sot>", "<eot>", "<unk>", "<mask>"]] == [0, 1, 2, 3, 4]


def test_encode_decode_round_trip_on_captions(tok):
    for caption in CORPUS[:50] + ["a never seen zebra near 42 giraffes?!"]:
        ids = tok.encode(caption)
        assert ids and all(5 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == caption


def test_normalisation_lowercases_and_collapses_whitespace(tok):
    assert tok.encode("  A   Red\tCIRCLE \n") == tok.encode("a red circle")
    assert tok.decode(tok.encode("  A   Red\tCIRCLE \n")) == "a red circle"


def test_training_learns_frequent_words_as_single_tokens(tok):
    assert len(tok.encode("circle")) == 1
    assert len(tok.encode("a small red circle")) == 4


def test_special_token_text_in_captions_is_not_injected(tok):
    ids = tok.encode("<sot> <eot> <pad> <mask> <unk>")
    assert min(ids) >= 5
    assert tok.decode(ids) == "<sot> <eot> <pad> <mask> <unk>"


def test_decode_skips_special_tokens_and_accepts_tensors(tok):
    batch = tok(["a red circle", "a blue star to the left of a large green cross"])
    assert tok.decode(batch[0]) == "a red circle"
    assert tok.decode([1, 4, 3] + tok.encode("a red circle") + [2, 0, 0]) == "a red circle"


def test_call_rows_are_sot_ids_eot_padded_to_longest(tok):
    texts = ["a red circle", "a small blue star to the left of a large green cross", ""]
    out = tok(texts, context_length=77)
    encoded = [tok.encode(t) for t in texts]
    longest = max(len(e) for e in encoded) + 2
    assert out.dtype == torch.long
    assert out.shape == (3, longest) and longest < 77
    for row, ids in zip(out.tolist(), encoded):
        expected = [1, *ids, 2]
        assert row == expected + [0] * (longest - len(expected))


def test_call_single_string_and_empty_string(tok):
    assert tok("").tolist() == [[1, 2]]
    one = tok("a red circle")
    assert one.shape[0] == 1 and one[0].tolist() == [1, *tok.encode("a red circle"), 2]


def test_truncation_keeps_eot_and_has_context_length(tok):
    long_text = " ".join(CORPUS[:20])
    ids = tok.encode(long_text)
    assert len(ids) > 30
    out = tok([long_text, "a red circle"], context_length=10)
    assert out.shape == (2, 10)
    assert out[0].tolist() == [1, *ids[:8], 2]
    # exactly context_length - 2 tokens: fits without truncation
    exact = tok.decode(ids[:8])
    assert tok(exact, context_length=10)[0].tolist() == [1, *ids[:8], 2]
    assert tok(long_text, context_length=2).tolist() == [[1, 2]]


def test_call_rejects_bad_arguments(tok):
    with pytest.raises(ValueError, match="context_length"):
        tok("a", context_length=1)
    with pytest.raises(ValueError, match="texts"):
        tok([])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok(["a", None])
    with pytest.raises(TypeError, match="text"):
        tok.encode(b"bytes")


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_unicode_never_yields_unk_and_round_trips(tok, text):
    ids = tok.encode(text)
    assert tok.unk_id not in ids and min(ids) >= 5
    expected = " ".join(unicodedata.normalize("NFKC", text).split()).lower()
    assert tok.decode(ids) == expected
    row = tok(text)[0].tolist()
    assert row[0] == 1 and row[-1] == 2 and 3 not in row


def test_lone_surrogates_are_replaced_not_fatal(tok):
    # json.loads('"\\ud800"') produces such strings; tokenizers rejects them as invalid UTF-8
    out = tok(["a \ud800 b", "ok"])
    assert out.shape[0] == 2 and 3 not in out.tolist()[0]
    assert tok.decode(tok.encode("a\udc00b")) == "a\ufffdb"


def test_huge_text_is_truncated(tok):
    text = ("a red circle 🐕 مرحبا \x00 " * 5000)[:100_000]
    out = tok([text, "x"], context_length=77)
    assert out.shape == (2, 77)
    assert out[0, 0] == 1 and out[0, -1] == 2 and (out != 3).all()


def test_save_and_load_give_identical_ids(tok, tmp_path):
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp file left
    loaded = Tokenizer.from_file(path)
    texts = CORPUS[:100] + UNICODE_TEXTS
    assert torch.equal(loaded(texts), tok(texts))
    assert loaded.vocab_size == tok.vocab_size
    assert Tokenizer.from_str(tok.to_str()).to_str() == tok.to_str()


def test_from_file_errors_name_the_path(tok, tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(CheckpointError, match="missing.json"):
        Tokenizer.from_file(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="bad.json"):
        Tokenizer.from_file(bad)
    config = json.loads(tok.to_str())
    vocab = config["model"]["vocab"]
    vocab["<pad>"], vocab["<sot>"] = vocab["<sot>"], vocab["<pad>"]
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"swapped.json.*'<pad>' has id 1, expected 0"):
        Tokenizer.from_file(swapped)


def test_vocab_is_sized_to_the_data():
    # One pair-free word seen once: no pair reaches min_frequency=2, so only specials + bytes.
    assert Tokenizer.train(["ab"], vocab_size=4096).vocab_size == MIN_VOCAB_SIZE == 261
    # min_frequency=1 merges the two pairs of "Ġab": (Ġ, a) then (Ġa, b).
    assert Tokenizer.train(["ab"], vocab_size=4096, min_frequency=1).vocab_size == 263
    small = Tokenizer.train(CORPUS[:200], vocab_size=4096)
    assert MIN_VOCAB_SIZE < small.vocab_size < 4096
    assert len(small._tok.get_vocab()) == small.vocab_size
    assert Tokenizer.train(CORPUS, vocab_size=270).vocab_size == 270


def test_train_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size must be >= 261.*got 100"):
        Tokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(ValueError, match="min_frequency must be >= 1, got 0"):
        Tokenizer.train(CORPUS, min_frequency=0)


def test_train_accepts_a_generator():
    tok = Tokenizer.train((c for c in CORPUS[:100]), vocab_size=300)
    assert tok.vocab_size == 300


def test_pickle_round_trip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.to_str() == tok.to_str()
    assert torch.equal(clone(CORPUS[:20]), tok(CORPUS[:20]))


def test_training_is_deterministic_within_and_across_processes(tok):
    digest = hashlib.sha256(tok.to_str().encode()).hexdigest()
    assert Tokenizer.train(CORPUS, vocab_size=4096).to_str() == tok.to_str()
    # Rust hash maps are seeded per process: check a fresh interpreter learns the same vocabulary.
    script = textwrap.dedent(
        """
        import hashlib, json, sys
        from coembed.tokenizer import Tokenizer
        tok = Tokenizer.train(json.load(sys.stdin), vocab_size=4096)
        print(hashlib.sha256(tok.to_str().encode()).hexdigest())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(CORPUS), capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == digest
