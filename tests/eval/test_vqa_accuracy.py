"""VQA accuracy: hand-computed arithmetic, and tricky answers scored exactly as the official scripts score them."""

from __future__ import annotations

import pytest

from vlv.eval.vqa_accuracy import (
    compared_answers,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    process_punctuation_evalai,
    question_accuracy,
    score_vqa,
)
from vlv.eval.vqa_data import VqaAnnotation, VqaDataset, VqaHumanAnswer, VqaQuestion


def _answers(*counts: tuple[str, int]) -> list[str]:
    out = [answer for answer, n in counts for _ in range(n)]
    assert len(out) == 10
    return out


# --- the scripts themselves, case by case ----------------------------------------------------------------------
# Each expected value below was produced by running the script itself (a Python 3 copy with `print` fixed, fed these
# cases as official questions / annotations / results JSON files) and reading its unrounded per-question accuracy:
#   official: GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py at a013f00 (2021, the current one)
#   evalai:   Cloud-CV/VQA-Challenge PythonEvaluationTools/vqaEvaluation/vqaEval.py (EvalAI server, 2017 challenge)
#   v2016:    GT-Vision-Lab/VQA vqaEval.py at 458a8b2 (2016), what this project computed before; not implemented,
#             kept to show what following the 2021 script changes.
# (name, prediction, human answer counts, official, evalai, v2016)
SCRIPT_CASES = [
    ("two_word_vs_ten_digits", "Two", [("2", 10)], 0, 1, 1),
    ("two_lower_vs_ten_digits", "two", [("2", 10)], 0, 1, 1),
    ("digit_vs_mixed_two_and_2", "2", [("two", 7), ("2", 3)], 1, 0.9, 0.9),
    ("word_vs_mixed_two_and_2", "two", [("two", 7), ("2", 3)], 1, 0.9, 0.9),
    ("digit_vs_even_mix", "2", [("two", 5), ("2", 5)], 1, 1, 1),
    ("none_vs_ten_zero", "none", [("0", 10)], 0, 1, 1),
    ("none_vs_mostly_none", "none", [("none", 8), ("0", 2)], 1, 0.6, 0.6),
    ("capital_yes_unanimous", "Yes", [("yes", 10)], 0, 1, 1),
    ("yes_period_unanimous", "yes.", [("yes", 10)], 0, 1, 1),
    ("yes_exclaim_split", "Yes!", [("yes", 6), ("no", 4)], 1, 1, 1),
    ("yes_newline_unanimous", "yes\n", [("yes", 10)], 1, 1, 1),
    ("yes_tab_padded_unanimous", "\tyes ", [("yes", 10)], 1, 1, 1),
    ("capital_yes_vs_padded_human", "Yes", [("yes", 9), ("yes ", 1)], 0, 1, 1),
    ("human_newline_answer", "yes", [("yes", 8), ("yes\n", 2)], 1, 1, 1),
    ("article_dog_unanimous", "a dog", [("dog", 10)], 0, 1, 1),
    ("the_dog_vs_the_dog", "the dog", [("the dog", 10)], 1, 0, 0),
    ("the_red_one_mixed", "the red one.", [("red one", 4), ("red", 3), ("the red one", 3)], 1, 0, 0),
    ("the_red_one_vs_red", "the red one.", [("red", 6), ("red one", 4)], 1, 0, 0),
    ("contraction_dont_unanimous", 'dont', [("don't", 10)], 0, 1, 1),
    ("contraction_dont_know_split", 'dont know', [("don't know", 6), ('no', 4)], 1, 1, 1),
    ("contraction_human_side", "don't know", [('dont know', 6), ('no', 4)], 1, 0, 0),
    ("comma_number_pred_unanimous", "1,000", [("1,000", 10)], 1, 0, 0),
    ("plain_number_vs_comma_unanimous", "1000", [("1,000", 10)], 0, 0, 0),
    ("comma_number_mixed", "1,000", [("1000", 5), ("1,000", 5)], 1, 1, 1),
    ("decimal", "3.5", [("3.5", 10)], 1, 1, 1),
    ("tshirt_unanimous", "t-shirt", [("t-shirt", 10)], 1, 0, 0),
    ("tshirt_split", "t-shirt", [("t-shirt", 3), ("shirt", 7)], 0.9, 0.9, 0.9),
    ("tshirt_space_vs_hyphen_split", "t shirt", [("t-shirt", 6), ("tshirt", 4)], 1, 1, 1),
    ("case_mixed_humans", "red", [("Red", 8), ("red", 2)], 1, 0.6, 0.6),
    ("two_period_minority", "Two.", [("2", 2), ("3", 8)], 0.6, 0.6, 0.6),
    ("three_word_vs_digit_split", "three", [("3", 5), ("4", 5)], 1, 1, 1),
    ("red_comma_white", "red,white", [("red white", 5), ("red and white", 5)], 1, 1, 1),
    ("red_comma_space_white", "red, white", [("red white", 5), ("red and white", 5)], 1, 1, 1),
    ("black_slash_white_unanimous", "black/white", [("black and white", 10)], 0, 0, 0),
    ("question_mark", "what?", [("what", 4), ("unknown", 6)], 1, 1, 1),
    ("parenthesised", "(left)", [("left", 7), ("right", 3)], 1, 1, 1),
    ("possessive", "man's", [("man's", 6), ('mans', 4)], 1, 1, 1),
    ("clock_time", "2:30", [("2:30", 7), ("230", 3)], 1, 1, 1),
    ("empty_prediction", "", [("yes", 10)], 0, 0, 0),
    ("many_periods", "...yes...", [("yes", 5), ("no", 5)], 1, 1, 1),
    ("trailing_hyphen", "up-", [("up", 5), ("down", 5)], 1, 1, 1),
    ("leading_quote", '"stop"', [('stop', 9), ('stop sign', 1)], 1, 1, 1),
    ("double_punct", "yes!!", [("yes", 5), ("no", 5)], 1, 1, 1),
    ("hyphen_digits", "1-2", [("1 2", 3), ("1-2", 3), ("2", 4)], 1, 0.9, 1),
    ("x_ray_unanimous", "x-ray", [("x-ray", 10)], 1, 0, 0),
    ("x_ray_split", "x-ray", [("x-ray", 3), ("x ray", 2), ("xray", 5)], 1, 1, 1),
    ("half_slash", "1/2", [("1/2", 3), ("half", 5), ("1 2", 2)], 1, 0.9, 1),
    ("fifty_fifty", "50-50", [("50-50", 2), ("50 50", 3), ("5050", 1), ("no", 4)], 1, 0.6, 1),
    ("big_number", "1,000,000", [("1000000", 2), ("1,000,000", 2), ("million", 6)], 1, 1, 1),
    ("red_comma_white2", "red,white", [("red,white", 2), ("red white", 3), ("white", 5)], 1, 1, 1),
    ("spaced_dash", "red - white", [("red white", 3), ("red", 7)], 0.9, 0.9, 0.9),
    ("trailing_q", "yes?", [("yes", 5), ("no", 5)], 1, 1, 1),
    ("mark_letter_digit", "t-10", [("t 10", 3), ("t10", 3), ("t-10", 4)], 1, 1, 1),
    ("ampersand", "b&w", [("b&w", 2), ("black and white", 6), ("b w", 2)], 0.6, 0.6, 0.6),
    ("email", "e-mail", [("e-mail", 1), ("e mail", 2), ("email", 7)], 0.9, 0.9, 0.9),
    ("inner_quotes", '"hi" there', [('hi there', 3), ('hello', 7)], 0.9, 0.9, 0.9),
    ("brackets_mid", "a(b)c", [("a b c", 3), ("abc", 7)], 0.9, 0, 0),
]
_IDS = [case[0] for case in SCRIPT_CASES]


@pytest.mark.parametrize("name, prediction, counts, official, evalai, v2016", SCRIPT_CASES, ids=_IDS)
def test_official_2021_script_per_question(name, prediction, counts, official, evalai, v2016):
    assert question_accuracy(prediction, _answers(*counts)) == pytest.approx(official, abs=1e-12)


@pytest.mark.parametrize("name, prediction, counts, official, evalai, v2016", SCRIPT_CASES, ids=_IDS)
def test_evalai_server_script_per_question(name, prediction, counts, official, evalai, v2016):
    assert question_accuracy(prediction, _answers(*counts), "evalai") == pytest.approx(evalai, abs=1e-12)


# where the 2021 script and the 2016 one disagree, in both directions
CHANGED_SINCE_2016 = {
    "two_word_vs_ten_digits": (0, 1),        # unanimous humans: the prediction is compared as written
    "capital_yes_unanimous": (0, 1),
    "yes_period_unanimous": (0, 1),
    "article_dog_unanimous": (0, 1),
    "contraction_dont_unanimous": (0, 1),
    "capital_yes_vs_padded_human": (0, 1),   # "yes " is stripped, so the humans agree -> no normalisation
    "the_red_one_mixed": (1, 0),             # 2016 never removed "the"/"one" from the human answers
    "digit_vs_mixed_two_and_2": (1, 0.9),    # 2021 turns the humans' "two" into "2" as well
    "case_mixed_humans": (1, 0.6),           # ... and lowercases "Red"
    "contraction_human_side": (1, 0),        # ... and restores the humans' "dont"
    "comma_number_pred_unanimous": (1, 0),   # 2016 compared "1000" with the stored "1,000"
    "tshirt_unanimous": (1, 0),
}


def test_2021_script_differs_from_2016_on_named_cases():
    by_name = {case[0]: case for case in SCRIPT_CASES}
    for name, (official, v2016) in CHANGED_SINCE_2016.items():
        _, prediction, counts, expected_official, _, expected_2016 = by_name[name]
        assert (expected_official, expected_2016) == (official, v2016), name
        assert question_accuracy(prediction, _answers(*counts)) == pytest.approx(official, abs=1e-12), name


def test_whole_tricky_set_overall():
    questions = tuple(VqaQuestion(qid, qid, name) for qid, (name, *_) in enumerate(SCRIPT_CASES, start=1))
    annotations = {qid: _annotation(qid, "other", "what", _answers(*counts))
                   for qid, (_, _, counts, *_) in enumerate(SCRIPT_CASES, start=1)}
    dataset = VqaDataset(questions=questions, annotations=annotations)
    predictions = {qid: case[1] for qid, case in enumerate(SCRIPT_CASES, start=1)}
    # the scripts' own overall figures on these 57 questions: official 78.42, evalai 75.79, 2016 76.84
    assert len(SCRIPT_CASES) == 57
    assert round(100 * score_vqa(dataset, predictions).overall, 2) == 78.42
    assert round(100 * score_vqa(dataset, predictions, answer_processing="evalai").overall, 2) == 75.79
    assert round(100 * sum(case[5] for case in SCRIPT_CASES) / len(SCRIPT_CASES), 2) == 76.84


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


# --- normalisation rules --------------------------------------------------------------------------------------

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


@pytest.mark.parametrize("raw, expected", [   # values printed by the EvalAI script's own processPunctuation
    ("50-50", "50-50"), ("1-2", "1-2"),        # a mark between digits is kept (the official rule spaces it)
    ("x-ray", "x ray"), ("a(b)c", "a b c"), ("(left)", "left"), ("  --yes--  ", "yes"),
    ("1,000", "1000"), ("red, white", "red white"), ("red,white", "red white"), ("a -- b", "a b"),
    ("what?!", "what"), ("yes...", "yes"), ("3.5", "3.5"), ("U.S.A.", "USA"), ("man's", "man's"),
])
def test_evalai_punctuation(raw, expected):
    assert process_punctuation_evalai(raw) == expected


def test_official_quirk_period_count_is_capped_at_32():
    # the official script passes re.UNICODE (= 32) as re.sub's count argument
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation_evalai("a" + "." * 40 + "a") == "a" + "." * 8 + "a"


def test_official_quirk_somebody_d_maps_to_somebodyd():
    assert process_digit_article("somebody'd") == "somebodyd"


def test_agreeing_human_answers_leave_both_sides_as_written():
    # official: unanimous "t-shirt" and the prediction "t-shirt" are compared as stored -> full credit
    assert compared_answers("t-shirt", _answers(("t-shirt", 10))) == ("t-shirt", ["t-shirt"] * 10)
    assert question_accuracy("t-shirt", _answers(("t-shirt", 10))) == 1.0
    # evalai: the prediction is always normalised, the unanimous humans are not -> no match
    assert compared_answers("t-shirt", _answers(("t-shirt", 10)), "evalai") == ("t shirt", ["t-shirt"] * 10)
    assert question_accuracy("t-shirt", _answers(("t-shirt", 10)), "evalai") == 0.0


def test_disagreeing_human_answers_normalise_both_sides():
    predicted, answers = compared_answers("The Two.", _answers(("Two", 3), ("the 2", 2), ("three", 5)))
    assert predicted == "2" and answers == ["2"] * 5 + ["3"] * 5
    # evalai: humans get the punctuation rule only, so "Two" and "the 2" stay apart from the prediction "2"
    predicted, answers = compared_answers("The Two.", _answers(("Two", 3), ("the 2", 2), ("three", 5)), "evalai")
    assert predicted == "2" and answers == ["Two"] * 3 + ["the 2"] * 2 + ["three"] * 5


def test_unknown_answer_processing_is_rejected():
    with pytest.raises(ValueError, match="answer_processing must be one of"):
        question_accuracy("yes", _answers(("yes", 10)), "vqa2016")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="answer_processing must be one of"):
        score_vqa(_dataset(), {1: "yes", 2: "2", 3: "4"}, answer_processing="mmf")  # type: ignore[arg-type]


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
    score = score_vqa(_dataset(), {1: "yes", 2: "two", 3: "5"})
    # per question: 1.0, 0.6, 0.0
    assert score.per_question == {1: 1.0, 2: pytest.approx(0.6), 3: 0.0}
    assert score.overall == pytest.approx((1.0 + 0.6 + 0.0) / 3)
    assert score.per_answer_type == {"number": pytest.approx(0.3), "yes/no": 1.0}
    assert score.per_question_type == {"how many": pytest.approx(0.3), "is the": 1.0}
    assert score.num_questions == 3


def test_answer_processing_changes_the_dataset_score():
    # "Yes" against ten "yes": 0 for the official script (compared as written), 1 for EvalAI (always normalised)
    official = score_vqa(_dataset(), {1: "Yes", 2: "two", 3: "5"})
    evalai = score_vqa(_dataset(), {1: "Yes", 2: "two", 3: "5"}, answer_processing="evalai")
    assert official.per_question == {1: 0.0, 2: pytest.approx(0.6), 3: 0.0}
    assert evalai.per_question == {1: 1.0, 2: pytest.approx(0.6), 3: 0.0}


def test_missing_or_unknown_predictions_are_rejected():
    with pytest.raises(ValueError, match="1 missing"):
        score_vqa(_dataset(), {1: "yes", 2: "2"})
    with pytest.raises(ValueError, match="1 unknown"):
        score_vqa(_dataset(), {1: "yes", 2: "2", 3: "4", 99: "x"})
