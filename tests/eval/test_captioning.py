"""BLEU-1..4 and CIDEr-D equal pycocoevalcap's own scorers (``Bleu(4)``, ``Cider()``) to 1e-9 on
generated caption sets: `shapes` captions, random word soups, and edge cases (empty candidates, a
single reference, repeated words, one image)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coembed.data.synthetic.shapes import captions, sample_scene
from coembed.eval.captioning import bleu, caption_metrics, cider_d, tokenize

pycoco_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
pycoco_cider = pytest.importorskip("pycocoevalcap.cider.cider")


def reference_scores(refs: dict, cands: dict) -> tuple[list[float], float]:
    """pycocoevalcap's BLEU-1..4 and CIDEr-D (its Bleu prints its counts unless verbose=0)."""
    bleus, _ = pycoco_bleu.Bleu(4).compute_score(refs, cands, verbose=0)
    cider, _ = pycoco_cider.Cider().compute_score(refs, cands)
    return [float(b) for b in bleus], float(cider)


def assert_matches(refs: dict, cands: dict) -> None:
    want_bleu, want_cider = reference_scores(refs, cands)
    got_bleu, (got_cider, per_image) = bleu(refs, cands), cider_d(refs, cands)
    assert got_bleu == pytest.approx(want_bleu, abs=1e-9, rel=1e-9)
    assert got_cider == pytest.approx(want_cider, abs=1e-9, rel=1e-9)
    _, want_per_image = pycoco_cider.Cider().compute_score(refs, cands)
    assert per_image == pytest.approx(list(want_per_image), abs=1e-9, rel=1e-9)


def shapes_caption_sets(seed: int, images: int) -> tuple[dict, dict]:
    """References: 4 captions of a scene; candidate: the 5th caption of the same scene, a caption of
    another scene, a truncated caption or nothing."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(images)]
    texts = [[tokenize(c) for c in captions(s, rng)] for s in scenes]
    refs, cands = {}, {}
    for i, caps in enumerate(texts):
        refs[i] = caps[:4]
        kind = rng.randrange(4)
        other = texts[rng.randrange(images)]
        words = caps[4].split()
        cands[i] = [[caps[4], other[0], " ".join(words[: rng.randrange(len(words) + 1)]), ""][kind]]
    return refs, cands


@pytest.mark.parametrize("seed", range(6))
def test_shapes_captions_match_pycocoevalcap(seed: int) -> None:
    refs, cands = shapes_caption_sets(seed, images=[1, 2, 5, 20, 60, 120][seed])
    assert_matches(refs, cands)


WORDS = st.sampled_from(["a", "red", "circle", "big", "the", "of", "left", "star", "two", "blue"])
SENTENCE = st.lists(WORDS, min_size=0, max_size=12).map(" ".join)


@st.composite
def caption_sets(draw: st.DrawFn) -> tuple[dict, dict]:
    """Small vocabularies make repeated words, shared n-grams and clipping common."""
    images = draw(st.integers(1, 6))
    refs = {f"img{i}": draw(st.lists(SENTENCE, min_size=1, max_size=5)) for i in range(images)}
    cands = {key: [draw(SENTENCE)] for key in refs}
    return refs, cands


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(caption_sets())
def test_random_caption_sets_match_pycocoevalcap(sets: tuple[dict, dict]) -> None:
    refs, cands = sets
    # pycocoevalcap's Cider asserts on a set whose references are all empty (no document frequencies).
    if not any(r.split() for rs in refs.values() for r in rs):
        with pytest.raises(ValueError):
            pycoco_cider.Cider().compute_score(refs, cands)
        return
    assert_matches(refs, cands)


def test_edge_cases_match_pycocoevalcap() -> None:
    cases = [
        ({1: ["a red circle"]}, {1: [""]}),  # one image, empty candidate
        ({1: ["a red circle on the left"], 2: ["a blue star"]}, {1: [""], 2: ["a blue star"]}),
        ({1: ["red red red red red"], 2: ["a star"]}, {1: ["red red red red red red red"], 2: ["star star"]}),  # clipping
        ({1: ["a big red circle"], 2: ["a big red circle"]}, {1: ["a big red circle"], 2: ["a big red circle"]}),  # df = N: zero vectors
        ({1: ["x"], 2: ["y z"]}, {1: ["x"], 2: ["y z"]}),  # one word: no bigrams, length 0
        ({1: ["a b c d e f", "a b", "a b c d"], 2: ["g h i"]}, {1: ["a b c"], 2: ["g h i j k l m n o"]}),  # closest-length ties
    ]
    for refs, cands in cases:
        assert_matches(refs, cands)


def test_known_values() -> None:
    """Hand-computed: a perfect match of 3-word captions over two images (n-grams unique to one image,
    idf log 2)."""
    refs = {1: ["a red circle"], 2: ["two blue stars"]}
    scores = caption_metrics(refs, {1: "a red circle", 2: "two blue stars"})
    assert scores["bleu1"] == pytest.approx(1.0) and scores["bleu3"] == pytest.approx(1.0)
    assert scores["bleu4"] == pytest.approx((1e-15 / 1e-9) ** 0.25)  # no 4-grams: the smoothing constants' ratio
    assert scores["cider"] == pytest.approx(7.5)  # 4-grams absent: orders 1..3 score 1, order 4 scores 0


def test_tokenize_lowercases_and_strips_punctuation() -> None:
    assert tokenize("A red, round Disc.  On the LEFT!") == "a red round disc on the left"
    assert tokenize("from left to right: a star; then (a ring)") == "from left to right a star then a ring"
    assert tokenize("it's the dogs' 'toy' 3-d") == "it's the dogs toy 3 d"
    assert tokenize("...") == ""


def test_caption_metrics_tokenises_and_names_keys() -> None:
    refs = {"a": ["A Red Circle.", "a red disc"], "b": ["Two stars!"]}
    got = caption_metrics(refs, {"a": ["a red circle"], "b": ["two stars"]})
    assert set(got) == {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    want_bleu, want_cider = reference_scores({"a": ["a red circle", "a red disc"], "b": ["two stars"]},
                                             {"a": ["a red circle"], "b": ["two stars"]})
    assert [got[f"bleu{k}"] for k in range(1, 5)] == pytest.approx(want_bleu, abs=1e-9)
    assert got["cider"] == pytest.approx(want_cider, abs=1e-9)


@pytest.mark.parametrize("refs, cands, field", [
    ({}, {}, "refs is empty"),
    ({1: ["a"]}, {2: ["a"]}, "same ids"),
    ({1: []}, {1: ["a"]}, r"refs\[1\]"),
    ({1: "a red circle"}, {1: ["a"]}, r"refs\[1\]"),
    ({1: ["a"]}, {1: ["a", "b"]}, r"cands\[1\]"),
])
def test_bad_input_names_the_argument(refs: dict, cands: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        bleu(refs, cands)
    with pytest.raises(ValueError, match=field):
        cider_d(refs, cands)
