"""VQA accuracy as the current official script computes it, plus the EvalAI challenge server's variant.

`answer_processing="official"` (the default) reproduces GT-Vision-Lab/VQA
`PythonEvaluationTools/vqaEvaluation/vqaEval.py` at its current revision (a013f00, March 2021, "Fixed
processing answers bug"). Per question:
1. the prediction and the ten human answers get newlines/tabs turned into spaces and are stripped;
2. only if the ten human answers are not all identical, BOTH sides are normalised: punctuation rules, then
   lowercase, number words zero..ten (and "none") to digits, articles dropped, missing contraction apostrophes
   restored; when the humans agree, the prediction must equal their answer as stored (so "Two" scores 0
   against ten "2", and "t-shirt" scores 1 against ten "t-shirt");
3. accuracy = mean over the 10 leave-one-out subsets of 9 human answers of min(1, matches / 3).

The 2016 revision (458a8b2, what many ports still copy, and what this module did before) differs in step 1-2:
it normalised the PREDICTION ALWAYS, gave the human answers only the punctuation rules and only when they
disagree, and did not strip the human answers. So it credits "Two" against ten "2" (1.0 instead of 0) but
misses "the red one." against humans saying "red one" / "the red one" (0 instead of 1), and on disagreeing
answers "two" vs "2", "Red" vs "red", "dont" vs "don't" count as different words. We follow 2021: it is what
the VQA maintainers publish today, so it is what anyone re-scoring our predictions with the official tools gets.

`answer_processing="evalai"` reproduces the evaluation code of the EvalAI server for the VQA Real Image
Challenge (Cloud-CV/VQA-Challenge, `PythonEvaluationTools/vqaEvaluation/vqaEval.py`, last changed in 50c6b1e,
April 2017; the repository describes itself as the EvalAI evaluation code for the 2017 challenge). It is the
2016 logic with a different punctuation function: the prediction is ALWAYS stripped, punctuation-processed and
digit/article-processed; the human answers are used as stored unless they disagree, and then get the
punctuation function only (no whitespace strip, no lowercase, no number words). Its punctuation function is
regex based: leading and trailing runs of marks/spaces are removed, commas between digits removed, a mark next
to a space or another mark becomes a space, runs of spaces collapse, a mark between two letters becomes a space
(a mark between digits, e.g. "1-2" or "50-50", is kept, unlike the official script), then the period rule.
It is the only public EvalAI evaluation code for VQA we found; whether later challenge years run a changed copy
is not documented publicly. MMF's `EvalAIAnswerProcessor` ("similar to Eval AI") is a third, different processor
(it first lowercases, deletes every comma and "?" and splits "'s", and it normalises both sides always): it is NOT
what this option reproduces.

Quirks kept on purpose in both modes so numbers match: the period regex's broken look-behind `(?!<=\\d)`,
`re.sub` given `re.UNICODE` (= 32) as its count (at most 32 periods removed), the official punctuation test made
on the text before any replacement, and the contraction table's odd entries. Python 3 semantics (the scripts are
Python 2; a difference only for non-ASCII digits matched by `\\d`). Leave-one-out drops one answer record at a
time: the official scripts drop every record equal to the held-out one, the same thing since answer ids are
distinct (vqa_data enforces it). Overall and per-type numbers are plain means of the per-question accuracies
(fractions in [0, 1] here; the official script prints them x100 rounded to 2 decimals).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence, get_args

from vlv.eval.vqa_data import VqaDataset

AnswerProcessing = Literal["official", "evalai"]
ANSWER_PROCESSINGS: tuple[str, ...] = get_args(AnswerProcessing)

_CONTRACTIONS = {
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
    "youve": "you've",
}
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = ("a", "an", "the")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_SUB_COUNT = 32  # both scripts pass re.UNICODE (= 32) where re.sub expects the count
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_MARKS = ";/[]\"{}()=+\\_-><@`,?!"  # the 21 punctuation marks both scripts treat (not ' : . & #)
_PUNCTUATION = tuple(_MARKS)

# The EvalAI server's regex punctuation rules over the same 21 marks (m) and m-or-space (s).
_M = "[" + re.escape(_MARKS) + "]"
_S = "[ " + re.escape(_MARKS) + "]"
_EVALAI_LEADING = re.compile(rf"\A{_S}+(?=[a-zA-Z0-9 ])")
_EVALAI_TRAILING = re.compile(rf"(?<=[a-zA-Z0-9 ]){_S}+\Z")
_EVALAI_DIGIT_COMMAS = re.compile(r"(?<=\d),+(?=\d)")
_EVALAI_MARK_BY_MARK_OR_SPACE = re.compile(rf"(?<={_S}){_M}|{_M}(?={_S})")
_EVALAI_SPACE_RUNS = re.compile(" +")
_EVALAI_MARK_BETWEEN_LETTERS = re.compile(rf"(?<=[a-zA-Z]){_M}(?=[a-zA-Z])")


def process_punctuation(text: str) -> str:
    """Official rule: drop a mark where it touches a space (or anywhere if the text has a digit,digit comma),
    else turn it into a space; then remove periods not followed by a digit."""
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for mark in _PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_SUB_COUNT)


def process_punctuation_evalai(text: str) -> str:
    """EvalAI server rule (regex based; see the module docstring)."""
    out = _EVALAI_LEADING.sub("", text)
    out = _EVALAI_TRAILING.sub("", out)
    out = _EVALAI_DIGIT_COMMAS.sub("", out)
    out = _EVALAI_MARK_BY_MARK_OR_SPACE.sub(" ", out)
    out = _EVALAI_SPACE_RUNS.sub(" ", out)
    out = _EVALAI_MARK_BETWEEN_LETTERS.sub(" ", out)
    out = _EVALAI_MARK_BETWEEN_LETTERS.sub("", out)  # a second pass, as the server runs it
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_SUB_COUNT)


def process_digit_article(text: str) -> str:
    """Lowercase, number words to digits, drop articles, restore apostrophes of known contractions."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def strip_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, then strip: the only cleaning an answer always gets."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """What the official script compares an answer as when the human answers disagree."""
    return process_digit_article(process_punctuation(strip_whitespace(text)))


def compared_answers(prediction: str, human_answers: Sequence[str],
                     answer_processing: AnswerProcessing = "official") -> tuple[str, list[str]]:
    """The prediction and human answers exactly as the chosen script compares them."""
    if answer_processing == "official":
        predicted, answers = strip_whitespace(prediction), [strip_whitespace(a) for a in human_answers]
        if len(set(answers)) > 1:
            answers = [process_digit_article(process_punctuation(a)) for a in answers]
            predicted = process_digit_article(process_punctuation(predicted))
        return predicted, answers
    if answer_processing == "evalai":
        predicted = process_digit_article(process_punctuation_evalai(strip_whitespace(prediction)))
        answers = list(human_answers)
        if len(set(answers)) > 1:
            answers = [process_punctuation_evalai(a) for a in answers]
        return predicted, answers
    raise ValueError(f"answer_processing must be one of {list(ANSWER_PROCESSINGS)}, got {answer_processing!r}")


def question_accuracy(prediction: str, human_answers: Sequence[str],
                      answer_processing: AnswerProcessing = "official") -> float:
    """Accuracy of one prediction against the (10) human answers, in [0, 1]."""
    if len(human_answers) < 2:
        raise ValueError(f"leave-one-out accuracy needs at least 2 human answers, got {len(human_answers)}")
    predicted, answers = compared_answers(prediction, human_answers, answer_processing)
    total = 0.0
    for held_out in range(len(answers)):
        matches = sum(1 for j, answer in enumerate(answers) if j != held_out and answer == predicted)
        total += min(1.0, matches / 3)
    return total / len(answers)


@dataclass(frozen=True)
class VqaScore:
    """Accuracies as fractions in [0, 1] (x100 for the official percentage)."""

    overall: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    per_question: dict[int, float] = field(repr=False)

    @property
    def num_questions(self) -> int:
        return len(self.per_question)


def score_vqa(dataset: VqaDataset, predictions: Mapping[int, str], *,
              answer_processing: AnswerProcessing = "official") -> VqaScore:
    """Score one prediction per question of `dataset`; every question must have one, and no others."""
    if answer_processing not in ANSWER_PROCESSINGS:
        raise ValueError(f"answer_processing must be one of {list(ANSWER_PROCESSINGS)}, got {answer_processing!r}")
    if not dataset.questions:
        raise ValueError("cannot score an empty VQA dataset")
    expected = {q.question_id for q in dataset.questions}
    missing = expected - predictions.keys()
    extra = predictions.keys() - expected
    if missing or extra:
        raise ValueError(f"predictions must cover exactly the {len(expected)} questions of the dataset: "
                         f"{len(missing)} missing (e.g. {sorted(missing)[:5]}), {len(extra)} unknown "
                         f"(e.g. {sorted(extra)[:5]})")
    per_question: dict[int, float] = {}
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    for question in dataset.questions:
        annotation = dataset.annotations[question.question_id]
        accuracy = question_accuracy(predictions[question.question_id], [a.answer for a in annotation.answers],
                                     answer_processing)
        per_question[question.question_id] = accuracy
        by_answer_type.setdefault(annotation.answer_type, []).append(accuracy)
        by_question_type.setdefault(annotation.question_type, []).append(accuracy)
    return VqaScore(
        overall=sum(per_question.values()) / len(per_question),
        per_answer_type={k: sum(v) / len(v) for k, v in sorted(by_answer_type.items())},
        per_question_type={k: sum(v) / len(v) for k, v in sorted(by_question_type.items())},
        per_question=per_question,
    )
