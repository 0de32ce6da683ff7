"""Loaders of the official VQA JSON formats: typed results, and clear errors on malformed files."""

from __future__ import annotations

import json

import pytest

from vlv.eval.vqa_data import (
    load_vqa_annotations,
    load_vqa_dataset,
    load_vqa_predictions,
    load_vqa_questions,
    write_vqa_predictions,
)


def _answers(answer: str = "yes", okvqa: bool = False) -> list[dict]:
    rows = [{"answer": answer, "answer_confidence": "yes", "answer_id": j + 1} for j in range(10)]
    if okvqa:
        for row in rows:
            row["raw_answer"] = answer + "s"
    return rows


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def vqav2_files(tmp_path):
    questions = _write(tmp_path / "q.json", {"info": {}, "task_type": "Open-Ended", "questions": [
        {"image_id": 42, "question": "Is it sunny?", "question_id": 42000},
        {"image_id": 42, "question": "How many dogs?", "question_id": 42001},
    ]})
    annotations = _write(tmp_path / "a.json", {"annotations": [
        {"question_id": 42000, "image_id": 42, "answer_type": "yes/no", "question_type": "is it",
         "answers": _answers("yes"), "multiple_choice_answer": "yes"},
        {"question_id": 42001, "image_id": 42, "answer_type": "number", "question_type": "how many",
         "answers": _answers("2"), "multiple_choice_answer": "2"},
    ]})
    return questions, annotations


def test_vqav2_files_load_into_dataclasses(vqav2_files):
    dataset = load_vqa_dataset(*vqav2_files)
    assert len(dataset) == 2
    assert [q.question for q in dataset.questions] == ["Is it sunny?", "How many dogs?"]
    annotation = dataset.annotations[42001]
    assert annotation.answer_type == "number" and annotation.question_type == "how many"
    assert [a.answer_id for a in annotation.answers] == list(range(1, 11))
    assert annotation.majority_answer() == "2"
    assert dataset.image_ids() == [42]


def test_okvqa_answers_without_multiple_choice_answer_load(tmp_path):
    path = _write(tmp_path / "ok.json", {"annotations": [
        {"question_id": 7, "image_id": 3, "answer_type": "other", "question_type": "eight",
         "answers": _answers("race", okvqa=True)[:6] + _answers("car", okvqa=True)[6:], "confidence": 3},
    ]})
    annotation = load_vqa_annotations(path)[7]
    assert annotation.multiple_choice_answer is None
    assert annotation.majority_answer() == "race"  # 6 of 10


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("questions"), "expected a JSON object with a 'questions' list"),
    (lambda d: d["questions"][1].pop("question_id"), r"questions\[1\]: missing field 'question_id'"),
    (lambda d: d["questions"][0].update(image_id="42"), "field 'image_id' must be int, got str"),
    (lambda d: d["questions"][0].update(question_id=True), "field 'question_id' must be int, got bool"),
    (lambda d: d["questions"][1].update(question_id=42000), "duplicate question_id 42000"),
    (lambda d: d["questions"][0].update(question="  "), "empty 'question'"),
    (lambda d: d["questions"].clear(), "'questions' list is empty"),
])
def test_malformed_questions_are_rejected(vqav2_files, mutate, message):
    questions, _ = vqav2_files
    data = json.loads(questions.read_text())
    mutate(data)
    _write(questions, data)
    with pytest.raises(ValueError, match=message):
        load_vqa_questions(questions)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["annotations"][0]["answers"].pop(), r"annotations\[0\] \(question_id 42000\): 'answers' must "
                                                     "hold 10 human answers, found 9"),
    (lambda d: d["annotations"][1]["answers"][3].pop("answer"), r"answers\[3\]: missing field 'answer'"),
    (lambda d: d["annotations"][1]["answers"][3].update(answer_id=1), "answer_id values must be distinct"),
    (lambda d: d["annotations"][0].pop("answer_type"), "missing field 'answer_type'"),
    (lambda d: d["annotations"][0].update(multiple_choice_answer=3), "'multiple_choice_answer' must be str"),
    (lambda d: d["annotations"].__setitem__(0, "oops"), r"annotations\[0\]: expected a JSON object, got str"),
])
def test_malformed_annotations_are_rejected(vqav2_files, mutate, message):
    _, annotations = vqav2_files
    data = json.loads(annotations.read_text())
    mutate(data)
    _write(annotations, data)
    with pytest.raises(ValueError, match=message):
        load_vqa_annotations(annotations)


def test_files_that_do_not_pair_up_are_rejected(vqav2_files, tmp_path):
    questions, annotations = vqav2_files
    data = json.loads(annotations.read_text())
    data["annotations"][1]["question_id"] = 99
    _write(annotations, data)
    with pytest.raises(ValueError, match="1 questions have no annotation .*1 annotations have no question"):
        load_vqa_dataset(questions, annotations)
    data["annotations"][1].update(question_id=42001, image_id=43)
    _write(annotations, data)
    with pytest.raises(ValueError, match="question_id 42001: image_id 42 in .* but 43 in"):
        load_vqa_dataset(questions, annotations)


def test_missing_and_invalid_json_files(tmp_path):
    with pytest.raises(ValueError, match="VQA questions file .*nope.json not found"):
        load_vqa_questions(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"questions": [')
    with pytest.raises(ValueError, match=r"is not valid JSON \(line 1, column"):
        load_vqa_questions(broken)


def test_predictions_round_trip_and_validation(tmp_path):
    path = tmp_path / "results.json"
    write_vqa_predictions(path, {5: "two", 3: "yes"})
    assert json.loads(path.read_text()) == [{"question_id": 3, "answer": "yes"}, {"question_id": 5, "answer": "two"}]
    assert load_vqa_predictions(path) == {3: "yes", 5: "two"}
    _write(path, [{"question_id": 3, "answer": "a"}, {"question_id": 3, "answer": "b"}])
    with pytest.raises(ValueError, match="duplicate question_id 3"):
        load_vqa_predictions(path)
    _write(path, {"question_id": 3})
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_vqa_predictions(path)
