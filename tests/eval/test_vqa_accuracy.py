"""VQA accuracy against a line-by-line transcription of the official ``vqaEval.py`` (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py, master): its normalisation and its leave-one-out rule
over answer dicts with ``answer_id``, on hand-made cases."""

from __future__ import annotations

import re

import pytest

from coembed.eval.vqa import evaluate_vqa, normalize_answer, process_punctuation, vqa_accuracy


class OfficialVQAEval:
    """vqaEval.py's VQAEval, reduced to its per-question arithmetic (no progress bar, no rounding)."""

    contractions = {
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
    manualMap = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                 "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
    articles = ["a", "an", "the"]
    periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
    commaStrip = re.compile(r"(\d)(\,)(\d)")
    punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]

    def processPunctuation(self, inText):  # noqa: N802, N803 - the script's names
        outText = inText  # noqa: N806
        for p in self.punct:
            if (p + " " in inText or " " + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, "")  # noqa: N806
            else:
                outText = outText.replace(p, " ")  # noqa: N806
        outText = self.periodStrip.sub("", outText, re.UNICODE)  # noqa: N806
        return outText

    def processDigitArticle(self, inText):  # noqa: N802, N803
        outText = []  # noqa: N806
        tempText = inText.lower().split()  # noqa: N806
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
        for wordId, word in enumerate(outText):  # noqa: N806
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        return " ".join(outText)

    def question_accuracy(self, resAns, answers):  # noqa: N803
        """The body of ``evaluate()``'s loop for one question; ``answers`` as in the annotation file."""
        gts = {"answers": [{"answer": a, "answer_id": i + 1} for i, a in enumerate(answers)]}
        resAns = resAns.replace("\n", " ")
        resAns = resAns.replace("\t", " ")
        resAns = resAns.strip()
        resAns = self.processPunctuation(resAns)
        resAns = self.processDigitArticle(resAns)
        gtAcc = []  # noqa: N806
        gtAnswers = [ans["answer"] for ans in gts["answers"]]  # noqa: N806
        if len(set(gtAnswers)) > 1:
            for ansDic in gts["answers"]:  # noqa: N806
                ansDic["answer"] = self.processPunctuation(ansDic["answer"])
        for gtAnsDatum in gts["answers"]:  # noqa: N806
            otherGTAns = [item for item in gts["answers"] if item != gtAnsDatum]  # noqa: N806
            matchingAns = [item for item in otherGTAns if item["answer"] == resAns]  # noqa: N806
            acc = min(1, float(len(matchingAns)) / 3)
            gtAcc.append(acc)
        return float(sum(gtAcc)) / len(gtAcc)


OFFICIAL = OfficialVQAEval()

# (prediction, ten human answers as VQA releases them)
CASES = [
    ("yes", ["yes"] * 10),
    ("no", ["yes"] * 10),
    ("yes", ["yes", "yes"] + ["no"] * 8),  # 2 of 10 match: 0.6
    ("yes", ["yes"] * 3 + ["no"] * 7),  # 3 of 10: 0.9
    ("yes", ["yes"] * 4 + ["no"] * 6),  # 4 of 10: 1.0
    ("yes", ["yes"] + ["no"] * 9),  # 1 of 10: 0.3
    ("Two", ["2"] * 7 + ["3"] * 3),
    ("two.", ["2"] * 5 + ["2.5"] * 5),
    ("2.5", ["2.5"] * 2 + ["2"] * 8),
    ("The red one!", ["red"] * 6 + ["red one"] * 4),
    ("a red circle", ["red circle"] * 4 + ["circle"] * 6),
    ("Red, circle", ["red circle", "red, circle", "red,circle"] + ["blue"] * 7),
    ("dont know", ["don't know"] * 3 + ["no"] * 7),
    ("1,000", ["1000"] * 5 + ["1,000"] * 5),
    ("left-side", ["left side", "leftside", "left-side", "left - side"] + ["right"] * 6),
    ("  yes\t", ["yes"] * 10),
    ("none", ["0"] * 10),
    ("(star)", ["star"] * 4 + ["( star )", "(star)"] + ["heart"] * 4),
    ("e.g. stars...", ["eg stars"] * 10),
    ("Im sure", ["I'm sure", "im sure"] + ["no"] * 8),
    ("red circle", ["red-circle"] * 10),  # unanimous answers are not punctuation-processed by the script
    ("10", ["ten"] * 10),  # not normalised by the script: never matches with normalize_answers=False
]
EXPECTED = {2: 0.6, 3: 0.9, 4: 1.0, 5: 0.3}


@pytest.mark.parametrize("case", range(len(CASES)))
def test_equals_official_script_exactly(case: int) -> None:
    prediction, answers = CASES[case]
    want = OFFICIAL.question_accuracy(prediction, answers)
    assert vqa_accuracy(prediction, answers, normalize_answers=False) == pytest.approx(want, abs=1e-12)
    if case in EXPECTED:
        assert want == pytest.approx(EXPECTED[case])


@pytest.mark.parametrize("case", range(len(CASES)))
def test_full_normalisation_equals_official_on_normalised_answers(case: int) -> None:
    """Answers already in the script's normal form (VQA's annotations are) score the same either way."""
    prediction, answers = CASES[case]
    normalised = [OFFICIAL.processDigitArticle(OFFICIAL.processPunctuation(a)) for a in answers]
    assert vqa_accuracy(prediction, normalised) == pytest.approx(OFFICIAL.question_accuracy(prediction, normalised), abs=1e-12)


def test_normalisation_matches_the_script_on_tricky_strings() -> None:
    texts = ["Yes.", "3.14", "a, b", "x,y", "1,5 apples", "it's", "a/b", "#1", "Mr. Smith's", "end.", "what?!",
             "the a an", "don't", "Dont", "y'allll", "somebody'd", "." * 40, "5.5.5", "ten past 2", "[x] {y}"]
    for text in texts:
        assert process_punctuation(text) == OFFICIAL.processPunctuation(text), text
        assert normalize_answer(text) == OFFICIAL.processDigitArticle(OFFICIAL.processPunctuation(text.strip())), text


def test_synthetic_answers_are_exact_match() -> None:
    """Ten copies of one exact answer: the formula is exact match, number words or digits alike."""
    assert vqa_accuracy("two", ["two"] * 10) == 1.0
    assert vqa_accuracy("2", ["two"] * 10) == 1.0
    assert vqa_accuracy("three", ["two"] * 10) == 0.0
    assert vqa_accuracy("Red.", ["red"]) == 1.0 and vqa_accuracy("blue", ["red"]) == 0.0  # one answer: exact match
    assert vqa_accuracy("2", ["two"] * 10, normalize_answers=False) == OFFICIAL.question_accuracy("2", ["two"] * 10) == 0.0


def test_per_type_table() -> None:
    result = evaluate_vqa(["yes", "no", "2", "red", "yes"], [["yes"] * 10, ["yes"] * 10, ["two"] * 10, ["red"] * 10,
                                                          ["yes", "yes"] + ["no"] * 8],
                          ["exists", "exists", "count", "color", "exists"])
    assert result.per_type == pytest.approx({"exists": (1 + 0 + 0.6) / 3, "count": 1.0, "color": 1.0})
    assert result.counts == {"exists": 3, "count": 1, "color": 1}
    assert result.overall == pytest.approx((1 + 0 + 1 + 1 + 0.6) / 5)
    assert list(result.per_type) == ["exists", "count", "color"]
    lines = result.table().splitlines()
    assert lines[0].split() == ["type", "n", "accuracy"] and lines[1].split() == ["exists", "3", "53.33"]
    assert lines[-1].split() == ["overall", "5", "72.00"]
    assert result.to_dict()["vqa_accuracy/count"] == 1.0 and result.to_dict()["questions"] == 5


def test_bad_input_names_the_argument() -> None:
    with pytest.raises(ValueError, match="answers"):
        vqa_accuracy("yes", [])
    with pytest.raises(ValueError, match="answers"):
        vqa_accuracy("yes", "yes")
    with pytest.raises(ValueError, match="one length"):
        evaluate_vqa(["yes"], [["yes"], ["no"]])
    with pytest.raises(ValueError, match="one length"):
        evaluate_vqa([], [])
