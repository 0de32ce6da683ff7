"""The official VQA accuracy (GT-Vision-Lab/VQA `vqaEval.py`, Python 3 version), reproduced rule for rule.

Per question: the predicted answer is cleaned (newlines/tabs to spaces, strip, punctuation rules, number words
to digits, articles dropped, contractions restored); the ten human answers get only the punctuation rules, and
only when they disagree (the official script relies on the annotations being stored normalised, as VQAv2's are).
Accuracy = mean over the 10 leave-one-out subsets of 9 human answers of min(1, matches / 3).
Overall and per-type numbers are plain means of the per-question accuracies (fractions in [0, 1] here; the
official script prints them x100 rounded to 2 decimals).

Quirks kept on purpose so numbers match the official ones: the period regex's broken look-behind
`(?!<=\\d)`, `re.sub` called with `re.UNICODE` in the count position (at most 32 periods removed), the
punctuation test made on the text before any replacement, and the contraction table's odd entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from vlv.eval.vqa_data import VqaDataset

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
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
_OFFICIAL_PERIOD_SUB_COUNT = re.UNICODE  # the official script passes re.UNICODE (32) as `count`


def process_punctuation(text: str) -> str:
    """Drop a punctuation mark where it touches a space (or anywhere if the text has a digit,digit comma),
    else turn it into a space; then remove periods not followed by a digit."""
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for mark in _PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, _OFFICIAL_PERIOD_SUB_COUNT)


def process_digit_article(text: str) -> str:
    """Lowercase, number words to digits, drop articles, restore apostrophes of known contractions."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(text: str) -> str:
    """What the official script compares a predicted answer as."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def question_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Official accuracy of one prediction against the (10) human answers, in [0, 1]."""
    if len(human_answers) < 2:
        raise ValueError(f"leave-one-out accuracy needs at least 2 human answers, got {len(human_answers)}")
    predicted = normalize_answer(prediction)
    answers = list(human_answers)
    if len(set(answers)) > 1:
        answers = [process_punctuation(answer) for answer in answers]
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


def score_vqa(dataset: VqaDataset, predictions: Mapping[int, str]) -> VqaScore:
    """Score one prediction per question of `dataset`; every question must have one, and no others."""
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
        accuracy = question_accuracy(predictions[question.question_id], [a.answer for a in annotation.answers])
        per_question[question.question_id] = accuracy
        by_answer_type.setdefault(annotation.answer_type, []).append(accuracy)
        by_question_type.setdefault(annotation.question_type, []).append(accuracy)
    return VqaScore(
        overall=sum(per_question.values()) / len(per_question),
        per_answer_type={k: sum(v) / len(v) for k, v in sorted(by_answer_type.items())},
        per_question_type={k: sum(v) / len(v) for k, v in sorted(by_question_type.items())},
        per_question=per_question,
    )
