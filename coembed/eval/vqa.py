"""VQA accuracy as the official evaluation script computes it (GT-Vision-Lab/VQA, ``vqaEval.py``).

Per question, the predicted answer is normalised (:func:`normalize_answer`: punctuation handling,
number words to digits, articles dropped, missing apostrophes of contractions restored) and scored
against the human answers with the leave-one-annotator-out rule: for each of the ``k`` annotators,
``min(1, matches among the other k-1 answers / 3)``; the question's accuracy is the mean of those
``k`` values. With ten identical answers this is exact match (9 matches or none). With two of ten
matching: the eight subsets that keep both give 2/3, the two that drop one give 1/3, mean 0.6.

Two choices where the script leaves a gap:

- The script normalises the human answers only with the punctuation step, and only when the
  annotators disagree: VQA's released annotations were normalised by its authors (digits, not number
  words). ``normalize_answers=True`` (the default) applies the full :func:`normalize_answer` to them,
  which changes nothing for such answers and lets answers written "two" match a predicted "2";
  ``normalize_answers=False`` is the script's exact treatment.
- A question with a single answer scores exact match (the leave-one-out rule would leave no answer
  to match and give 0 always).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've"
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The script's pattern is "(?!<=\d)(\.)(?!\d)": a typo for a look-behind, its first group is a
# look-ahead that always holds before a ".", so it removes every "." not followed by a digit.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# It passes re.UNICODE (32) where re.sub takes ``count``, so at most 32 periods are removed.
_PERIOD_COUNT = int(re.UNICODE)
_DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")
MATCHES_FOR_FULL_CREDIT = 3


def process_punctuation(text: str) -> str:
    """The script's ``processPunctuation``: each punctuation mark is deleted when it touches a space
    somewhere in ``text`` (or ``text`` has a digit-comma-digit), else replaced by a space; then periods
    not followed by a digit are removed."""
    out = text
    comma_number = _DIGIT_COMMA.search(text) is not None
    for p in PUNCTUATION:
        spaced = p + " " in text or " " + p in text  # tested on the input, as the script does
        out = out.replace(p, "" if spaced or comma_number else " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The script's ``processDigitArticle``: lowercase, number words to digits, articles dropped,
    contractions written without their apostrophe restored."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """An answer as the script compares it: tabs and newlines as spaces, stripped, then
    :func:`process_punctuation` and :func:`process_digit_article`."""
    return process_digit_article(process_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


def _reference_answers(answers: Sequence[str], normalize_answers: bool) -> list[str]:
    if normalize_answers:
        return [normalize_answer(a) for a in answers]
    # vqaEval.py: the punctuation step only, and only when the annotators disagree.
    return [process_punctuation(a) for a in answers] if len(set(answers)) > 1 else list(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str], *, normalize_answers: bool = True) -> float:
    """Accuracy of one predicted answer against the human answers (see the module).

    Args:
        prediction: the model's answer.
        answers: the annotators' answers (VQA has ten).
        normalize_answers: normalise the human answers like the prediction (else as the script does).

    Returns:
        A value in [0, 1]: the mean over left-out annotators of ``min(1, matches / 3)``.

    Raises:
        ValueError: ``answers`` is empty or holds a non-string.
    """
    if isinstance(answers, str) or not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"answers must be a non-empty list of strings, got {answers!r:.80}")
    pred = normalize_answer(prediction)
    refs = _reference_answers(answers, normalize_answers)
    if len(refs) == 1:
        return float(refs[0] == pred)
    matches = sum(r == pred for r in refs)
    # Leaving out a matching answer leaves matches - 1, leaving out another leaves matches.
    per_left_out = [min(1.0, (matches - (r == pred)) / MATCHES_FOR_FULL_CREDIT) for r in refs]
    return sum(per_left_out) / len(per_left_out)


@dataclass
class VQAResult:
    """Accuracies of a set of answered questions.

    Attributes:
        overall: mean accuracy over all questions.
        per_type: question type -> mean accuracy of its questions.
        counts: question type -> number of questions.
        per_question: the accuracy of each question, in input order.
    """

    overall: float
    per_type: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    per_question: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready metrics: ``vqa_accuracy`` and ``vqa_accuracy/<type>`` plus the counts."""
        return {"vqa_accuracy": self.overall, **{f"vqa_accuracy/{t}": a for t, a in self.per_type.items()},
                "questions": sum(self.counts.values()), "questions_per_type": dict(self.counts)}

    def table(self) -> str:
        """A plain-text table: one row per question type, then the overall row (accuracy in %)."""
        width = max([len("overall"), *map(len, self.per_type)])
        rows = [f"{'type':<{width}}  {'n':>6}  {'accuracy':>8}"]
        rows += [f"{t:<{width}}  {self.counts[t]:>6}  {100 * a:>8.2f}" for t, a in self.per_type.items()]
        rows.append(f"{'overall':<{width}}  {sum(self.counts.values()):>6}  {100 * self.overall:>8.2f}")
        return "\n".join(rows)


def evaluate_vqa(predictions: Sequence[str], answers: Sequence[Sequence[str]], types: Sequence[str] | None = None, *,
                 normalize_answers: bool = True) -> VQAResult:
    """VQA accuracy of many questions, overall and per question type.

    Args:
        predictions: the model's answer to each question.
        answers: each question's human answers.
        types: each question's type (all ``"all"`` when None); types keep their first-seen order.
        normalize_answers: see :func:`vqa_accuracy`.

    Raises:
        ValueError: the sequences differ in length or are empty, or an answer list is invalid.
    """
    types = ["all"] * len(predictions) if types is None else list(types)
    if not predictions or len(answers) != len(predictions) or len(types) != len(predictions):
        raise ValueError(f"predictions, answers and types must be non-empty and of one length, got "
                         f"{len(predictions)}, {len(answers)} and {len(types)}")
    scores = [vqa_accuracy(p, a, normalize_answers=normalize_answers) for p, a in zip(predictions, answers)]
    per_type: dict[str, list[float]] = {}
    for kind, score in zip(types, scores):
        per_type.setdefault(kind, []).append(score)
    return VQAResult(overall=sum(scores) / len(scores), per_type={t: sum(s) / len(s) for t, s in per_type.items()},
                     counts={t: len(s) for t, s in per_type.items()}, per_question=scores)
