"""Caption metrics as the COCO caption evaluation computes them: BLEU-1..4 and CIDEr-D.

The numbers equal pycocoevalcap's ``Bleu(4).compute_score`` and ``Cider().compute_score`` on the same
tokenised inputs (``tests/eval/test_captioning.py`` checks this to 1e-9), including their details:

- BLEU is *corpus-level*: clipped n-gram matches and candidate n-gram counts are summed over all
  images before the geometric mean; the brevity penalty uses the summed candidate length against the
  summed "closest" reference lengths (ties go to the shorter reference); the smoothing constants
  ``tiny = 1e-15`` (numerator) and ``small = 1e-9`` (denominator) keep a zero count finite.
- CIDEr-D: TF-IDF vectors of 1..4-grams whose document frequencies come from the *references of
  the evaluated set* (one document per image), the candidate's weights clipped to the reference's,
  a Gaussian length penalty with sigma 6, the mean over n, the mean over references, times 10, and
  the corpus score is the mean over images. pycocoevalcap measures the penalty's lengths in bigrams;
  the difference of two lengths is the same in words whenever both sentences are non-empty, and an
  empty sentence scores 0 whatever the penalty, so words are used here.

Both scorers take whitespace-tokenised text. pycocoevalcap first runs the Stanford PTB tokenizer,
which needs Java; :func:`tokenize` stands in for it (lowercase, punctuation removed). It gives the PTB
tokenizer's output for plain text like the ``shapes`` captions, and differs on contractions and
hyphenation ("don't" stays one token here, PTB splits it into "do n't").
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

NGRAM_ORDER = 4
CIDER_SIGMA = 6.0
_BLEU_TINY = 1e-15  # pycocoevalcap's numerator constant: a zero match count gives ~0, not 0/0
_BLEU_SMALL = 1e-9  # its denominator constant: a zero guess count does not divide by zero
_PUNCTUATION = re.compile(r"[^\w\s']|_|(?<!\w)'|'(?!\w)")  # apostrophes inside words are kept

NGrams = Counter  # n-gram tuple -> count, n = 1..4 together


def tokenize(text: str) -> str:
    """Lowercase ``text``, drop punctuation and collapse whitespace: ``"A red, round Disc."`` ->
    ``"a red round disc"`` (a deterministic stand-in for the Java PTB tokenizer; see the module)."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def tokenize_all(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    """:func:`tokenize` applied to every caption of an ``{id: [captions]}`` dict."""
    return {key: [tokenize(c) for c in values] for key, values in captions.items()}


def ngram_counts(sentence: str, n: int = NGRAM_ORDER) -> NGrams:
    """Counts of every 1..``n``-gram of the whitespace-split ``sentence``."""
    words = sentence.split()
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


# ----------------------------------------------------------------------------- inputs
def _check_inputs(refs: Mapping[Hashable, Sequence[str]], cands: Mapping[Hashable, Sequence[str]]) -> list[Hashable]:
    """The ids in ``refs`` order, after checking that both dicts cover the same ids with one candidate
    and at least one reference each (pycocoevalcap asserts the same)."""
    if not refs:
        raise ValueError("refs is empty; give at least one image's reference captions")
    if set(refs) != set(cands):
        missing, extra = set(refs) - set(cands), set(cands) - set(refs)
        raise ValueError(f"refs and cands must have the same ids; only in refs: {sorted(map(str, missing))[:5]}, "
                         f"only in cands: {sorted(map(str, extra))[:5]}")
    for key in refs:
        if isinstance(refs[key], str) or not refs[key] or not all(isinstance(r, str) for r in refs[key]):
            raise ValueError(f"refs[{key!r}] must be a non-empty list of strings, got {refs[key]!r:.80}")
        if isinstance(cands[key], str) or len(cands[key]) != 1 or not isinstance(cands[key][0], str):
            raise ValueError(f"cands[{key!r}] must be a list holding exactly one string, got {cands[key]!r:.80}")
    return list(refs)


# ----------------------------------------------------------------------------- BLEU
def _closest_length(ref_lengths: Sequence[int], length: int) -> int:
    """The reference length closest to ``length``, the shorter one on a tie."""
    return min((abs(r - length), r) for r in ref_lengths)[1]


def _bleu_stats(refs: Sequence[str], cand: str, n: int) -> tuple[int, int, list[int], list[int]]:
    """(candidate length, effective reference length, candidate n-gram counts per order, clipped
    matches per order) of one image."""
    ref_counts = [ngram_counts(r, n) for r in refs]
    max_ref: dict[tuple[str, ...], int] = {}
    for counts in ref_counts:
        for gram, count in counts.items():
            max_ref[gram] = max(max_ref.get(gram, 0), count)
    length = len(cand.split())
    guess = [max(0, length - k + 1) for k in range(1, n + 1)]
    correct = [0] * n
    for gram, count in ngram_counts(cand, n).items():
        correct[len(gram) - 1] += min(max_ref.get(gram, 0), count)
    return length, _closest_length([len(r.split()) for r in refs], length), guess, correct


def bleu(refs: Mapping[Hashable, Sequence[str]], cands: Mapping[Hashable, Sequence[str]], n: int = NGRAM_ORDER) -> list[float]:
    """Corpus BLEU-1..``n`` of tokenised captions, as pycocoevalcap's ``Bleu(n).compute_score``.

    Args:
        refs: image id -> reference captions (one or more).
        cands: image id -> a list holding the one candidate caption.
        n: highest n-gram order.

    Returns:
        ``[BLEU-1, ..., BLEU-n]``.

    Raises:
        ValueError: the ids differ, or an entry is not a list of strings of the right length.
    """
    keys = _check_inputs(refs, cands)
    test_len = ref_len = 0
    guess, correct = [0] * n, [0] * n
    for key in keys:
        length, closest, g, c = _bleu_stats(refs[key], cands[key][0], n)
        test_len, ref_len = test_len + length, ref_len + closest
        guess, correct = [a + b for a, b in zip(guess, g)], [a + b for a, b in zip(correct, c)]
    ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    scores, product = [], 1.0
    for k in range(n):
        # The running product in pycocoevalcap's order keeps the float results identical.
        product *= float(correct[k] + _BLEU_TINY) / (guess[k] + _BLEU_SMALL)
        scores.append(product ** (1.0 / (k + 1)) * brevity)
    return scores


# ----------------------------------------------------------------------------- CIDEr-D
def _document_frequency(ref_counts: Sequence[Sequence[NGrams]]) -> Counter:
    """Per n-gram, the number of images whose references contain it."""
    df: Counter = Counter()
    for counts in ref_counts:
        df.update({gram for c in counts for gram in c})
    return df


def _tfidf(counts: NGrams, df: Counter, log_images: float, n: int) -> tuple[list[dict], list[float], int]:
    """Per order: the TF-IDF vector and its norm; and the sentence length in words."""
    vec: list[dict] = [{} for _ in range(n)]
    norm = [0.0] * n
    for gram, tf in counts.items():
        k = len(gram) - 1
        vec[k][gram] = float(tf) * (log_images - math.log(max(1.0, df.get(gram, 0))))
        norm[k] += vec[k][gram] ** 2
    length = sum(c for gram, c in counts.items() if len(gram) == 1)
    return vec, [math.sqrt(x) for x in norm], length


def _cider_sim(cand: tuple, ref: tuple, n: int, sigma: float) -> float:
    """Sum over orders of the clipped cosine similarity times the Gaussian length penalty."""
    (vec_c, norm_c, len_c), (vec_r, norm_r, len_r) = cand, ref
    penalty = math.e ** (-(float(len_c - len_r) ** 2) / (2 * sigma ** 2))
    total = 0.0
    for k in range(n):
        dot = sum(min(w, vec_r[k].get(gram, 0.0)) * vec_r[k].get(gram, 0.0) for gram, w in vec_c[k].items())
        if norm_c[k] != 0 and norm_r[k] != 0:  # an all-zero vector (every n-gram in every image) scores 0
            dot /= norm_c[k] * norm_r[k]
        total += dot * penalty
    return total


def cider_d(refs: Mapping[Hashable, Sequence[str]], cands: Mapping[Hashable, Sequence[str]], *,
            n: int = NGRAM_ORDER, sigma: float = CIDER_SIGMA) -> tuple[float, list[float]]:
    """CIDEr-D of tokenised captions, as pycocoevalcap's ``Cider().compute_score``.

    Args:
        refs: image id -> reference captions; their n-grams give the document frequencies.
        cands: image id -> a list holding the one candidate caption.
        n: highest n-gram order.
        sigma: standard deviation of the length penalty.

    Returns:
        The corpus score (mean over images) and the per-image scores in ``refs`` order.

    Raises:
        ValueError: the ids differ, or an entry is not a list of strings of the right length.
    """
    keys = _check_inputs(refs, cands)
    ref_counts = [[ngram_counts(r, n) for r in refs[key]] for key in keys]
    df = _document_frequency(ref_counts)
    log_images = math.log(float(len(keys)))
    scores = []
    for key, counts in zip(keys, ref_counts):
        cand = _tfidf(ngram_counts(cands[key][0], n), df, log_images, n)
        total = sum(_cider_sim(cand, _tfidf(c, df, log_images, n), n, sigma) for c in counts)
        scores.append(total / n / len(counts) * 10.0)  # mean over orders, mean over references, x10
    return sum(scores) / len(scores), scores


def caption_metrics(refs: Mapping[Hashable, Sequence[str]], cands: Mapping[Hashable, Sequence[str]], *,
                    tokenized: bool = False) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D of candidate captions against references.

    Args:
        refs: image id -> reference captions.
        cands: image id -> a list holding the one candidate caption (a plain string is accepted too).
        tokenized: the captions are already tokenised; otherwise :func:`tokenize` is applied first.

    Returns:
        ``{"bleu1", "bleu2", "bleu3", "bleu4", "cider"}``.
    """
    cands = {key: [value] if isinstance(value, str) else value for key, value in cands.items()}
    if not tokenized:
        refs, cands = tokenize_all(refs), tokenize_all(cands)
    scores = bleu(refs, cands)
    return {**{f"bleu{k + 1}": s for k, s in enumerate(scores)}, "cider": cider_d(refs, cands)[0]}
