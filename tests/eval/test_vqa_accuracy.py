"""The official VQA accuracy, checked on cases computed by hand (each comment shows the arithmetic)."""

from __future__ import annotations

import pytest

from vlv.eval.vqa_accuracy import (
    normalize_answer,
    process_digit_article,
    process_punctuation,
    question_accuracy,
    score_vqa,
)
from vlv.eval.vqa_data import VqaAnnotation, VqaDataset, VqaHumanAnswer, VqaQuestion


def _answers(*counts: tuple[str, int]) -> list[str]:
    out = [answer for answer, n in counts for _ in range(n)]
    assert len(out) == 10
    return out


# --- leave-one-out arithmetic -------------------------------------------------------------------------------

def test_unanimous_answers_give_full_credit():
    # every held-out subset has 9 matches -> min(1, 9/3) = 1
    assert question_accuracy("yes", _answers(("yes", 10))) == 1.0


def test_two_of_ten_matching_gives_point_six():
    # held out one of the 2 matches (2 subsets): 1 match left -> 1/3
    # held out one of the 8 others (8 subsets): 2 matches left -> 2/3
    # (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10
    assert question_accuracy("red", _answers(("red", 2), ("orange", 8))) == pytest.approx(0.6, abs=1e-12)


def test_one_of_ten_matching_gives_point_three():
    # held out the match: 0 -> 0; 9 others: 1 match -> 1/3; 9 * (1/3) / 10 = 0.3
    assert question_accuracy("cat", _answers(("cat", 1), ("dog", 9))) == pytest.approx(0.3, abs=1e-12)


def test_three_of_ten_matching_gives_point_nine():
    # 3 subsets without one match: 2/3; 7 subsets with all 3 matches: 1; (3 * 2/3 + 7) / 10 = 0.9
    assert question_accuracy("2", _answers(("2", 3), ("3", 7))) == pytest.approx(0.9, abs=1e-12)


def test_four_of_ten_matching_is_already_full_credit():
    # worst subset still has 3 matches -> 1
    assert question_accuracy("2", _answers(("2", 4), ("3", 6))) == 1.0


def test_no_match_scores_zero():
    assert question_accuracy("blue", _answers(("red", 5), ("green", 5))) == 0.0


# --- normalisation rules of the official script -------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("yes.", "yes"),                # period not followed by a digit is removed
    ("3.5", "3.5"),                 # period followed by a digit stays
    ("1,000", "1000"),              # digit,digit comma: every punctuation mark is deleted, not spaced
    ("red,white", "red white"),     # comma touching no space becomes a space
    ("red, white", "red white"),    # comma touching a space is deleted
    ("black/white", "black white"),
    ("t-shirt", "t shirt"),
    ("what?!", "what"),             # '?' and '!' touch no space -> spaces, then split/join drops them
    ("(left)", "left"),
])
def test_punctuation(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("none", "0"), ("ten", "10"), ("eleven", "eleven"),  # only zero..ten (and none) map
    ("two dogs", "2 dogs"),
    ("A dog", "dog"), ("an apple", "apple"), ("The red one", "red 1"),  # articles go; "one" is a number
    ("isnt", "isn't"), ("dont", "don't"), ("Its", "its"),  # contractions table; "its" is not in it
    ("  Yes\n", "yes"), ("red\tcar", "red car"),
])
def test_digits_articles_contractions_and_whitespace(raw, expected):
    assert normalize_answer(raw) == expected


def test_official_quirk_period_count_is_capped_at_32():
    # the official script passes re.UNICODE (= 32) as re.sub's count argument
    assert process_punctuation("." * 40) == "." * 8


def test_official_quirk_somebody_d_maps_to_somebodyd():
    assert process_digit_article("somebody'd") == "somebodyd"


def test_agreeing_human_answers_are_not_normalised():
    # unanimous "t-shirt" stays as stored, while the prediction becomes "t shirt": no match (official quirk)
    assert question_accuracy("t-shirt", _answers(("t-shirt", 10))) == 0.0
    # when humans disagree their punctuation is processed too: 3 matches of "t shirt" -> 0.9 as above
    assert question_accuracy("t-shirt", _answers(("t-shirt", 3), ("shirt", 7))) == pytest.approx(0.9, abs=1e-12)


def test_number_word_prediction_matches_digit_answers():
    # "Two." -> "2"; 2 of 10 humans said "2" -> 0.6
    assert question_accuracy("Two.", _answers(("2", 2), ("3", 8))) == pytest.approx(0.6, abs=1e-12)


def test_article_and_contraction_prediction_matches():
    assert question_accuracy("The dog", _answers(("dog", 10))) == 1.0
    assert question_accuracy("doesnt", _answers(("doesn't", 6), ("no", 4))) == 1.0


# --- dataset scoring ----------------------------------------------------------------------------------------

def _annotation(qid: int, answer_type: str, question_type: str, answers: list[str]) -> VqaAnnotation:
    return VqaAnnotation(qid, 1, answer_type, question_type,
                         tuple(VqaHumanAnswer(a, "yes", j + 1) for j, a in enumerate(answers)))


def _dataset() -> VqaDataset:
    annotations = {
        1: _annotation(1, "yes/no", "is the", _answers(("yes", 10))),
        2: _annotation(2, "number", "how many", _answers(("2", 2), ("3", 8))),
        3: _annotation(3, "number", "how many", _answers(("4", 10))),
    }
    return VqaDataset(questions=tuple(VqaQuestion(q, 1, f"q{q}?") for q in (1, 2, 3)), annotations=annotations)


def test_overall_and_per_answer_type():
    score = score_vqa(_dataset(), {1: "Yes", 2: "two", 3: "5"})
    # per question: 1.0, 0.6, 0.0
    assert score.per_question == {1: 1.0, 2: pytest.approx(0.6), 3: 0.0}
    assert score.overall == pytest.approx((1.0 + 0.6 + 0.0) / 3)
    assert score.per_answer_type == {"number": pytest.approx(0.3), "yes/no": 1.0}
    assert score.per_question_type == {"how many": pytest.approx(0.3), "is the": 1.0}
    assert score.num_questions == 3


def test_missing_or_unknown_predictions_are_rejected():
    with pytest.raises(ValueError, match="1 missing"):
        score_vqa(_dataset(), {1: "yes", 2: "2"})
    with pytest.raises(ValueError, match="1 unknown"):
        score_vqa(_dataset(), {1: "yes", 2: "2", 3: "4", 99: "x"})
