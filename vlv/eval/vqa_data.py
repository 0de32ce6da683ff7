"""Loaders for the official VQA JSON formats (VQAv2 and OK-VQA share them) into typed dataclasses.

- questions file: `{"questions": [{"image_id", "question", "question_id"}, ...]}`
- annotations file: `{"annotations": [{"question_id", "image_id", "answer_type", "question_type",
  "answers": [{"answer", "answer_confidence", "answer_id"} x 10], "multiple_choice_answer"}, ...]}`
  (OK-VQA has no `multiple_choice_answer` and adds `raw_answer` to each answer: both accepted)
- predictions (the official results format): `[{"question_id", "answer"}, ...]`

A malformed file fails with a ValueError naming the file, the entry and the field: evaluating on silently
dropped questions would give a number that looks right and is not.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from vlv.eval.json_files import read_json, require_field, top_level_list

NUM_HUMAN_ANSWERS = 10


@dataclass(frozen=True)
class VqaQuestion:
    question_id: int
    image_id: int
    question: str


@dataclass(frozen=True)
class VqaHumanAnswer:
    answer: str
    answer_confidence: str
    answer_id: int


@dataclass(frozen=True)
class VqaAnnotation:
    question_id: int
    image_id: int
    answer_type: str  # VQAv2: "yes/no", "number", "other"
    question_type: str
    answers: tuple[VqaHumanAnswer, ...]
    multiple_choice_answer: str | None = None

    def majority_answer(self) -> str:
        """`multiple_choice_answer` when present (VQAv2), else the most frequent human answer (first on ties)."""
        if self.multiple_choice_answer is not None:
            return self.multiple_choice_answer
        return Counter(a.answer for a in self.answers).most_common(1)[0][0]


@dataclass(frozen=True)
class VqaDataset:
    questions: tuple[VqaQuestion, ...]  # file order
    annotations: dict[int, VqaAnnotation]  # by question_id

    def __len__(self) -> int:
        return len(self.questions)

    def image_ids(self) -> list[int]:
        return sorted({q.image_id for q in self.questions})


def load_vqa_questions(path: str | Path) -> tuple[VqaQuestion, ...]:
    entries = top_level_list(read_json(path, "VQA questions"), "questions", path, "VQA questions")
    questions, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{path}: questions[{i}]"
        question = VqaQuestion(question_id=require_field(entry, "question_id", int, where),
                               image_id=require_field(entry, "image_id", int, where),
                               question=require_field(entry, "question", str, where))
        if not question.question.strip():
            raise ValueError(f"{where}: empty 'question'")
        if question.question_id in seen:
            raise ValueError(f"{where}: duplicate question_id {question.question_id}")
        seen.add(question.question_id)
        questions.append(question)
    if not questions:
        raise ValueError(f"{path}: the 'questions' list is empty")
    return tuple(questions)


def _parse_answers(entry: dict, where: str) -> tuple[VqaHumanAnswer, ...]:
    raw = require_field(entry, "answers", list, where)
    if len(raw) != NUM_HUMAN_ANSWERS:
        raise ValueError(f"{where}: 'answers' must hold {NUM_HUMAN_ANSWERS} human answers, found {len(raw)}")
    answers = tuple(
        VqaHumanAnswer(answer=require_field(a, "answer", str, f"{where}.answers[{j}]"),
                       answer_confidence=require_field(a, "answer_confidence", str, f"{where}.answers[{j}]"),
                       answer_id=require_field(a, "answer_id", int, f"{where}.answers[{j}]"))
        for j, a in enumerate(raw)
    )
    if len({a.answer_id for a in answers}) != len(answers):
        raise ValueError(f"{where}: answer_id values must be distinct, got {[a.answer_id for a in answers]}")
    return answers


def load_vqa_annotations(path: str | Path) -> dict[int, VqaAnnotation]:
    entries = top_level_list(read_json(path, "VQA annotations"), "annotations", path, "VQA annotations")
    annotations: dict[int, VqaAnnotation] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: annotations[{i}]"
        question_id = require_field(entry, "question_id", int, where)
        where = f"{where} (question_id {question_id})"
        mc_answer = entry.get("multiple_choice_answer")
        if mc_answer is not None and not isinstance(mc_answer, str):
            raise ValueError(f"{where}: field 'multiple_choice_answer' must be str, got {type(mc_answer).__name__}")
        annotation = VqaAnnotation(
            question_id=question_id, image_id=require_field(entry, "image_id", int, where),
            answer_type=require_field(entry, "answer_type", str, where),
            question_type=require_field(entry, "question_type", str, where),
            answers=_parse_answers(entry, where), multiple_choice_answer=mc_answer,
        )
        if question_id in annotations:
            raise ValueError(f"{where}: duplicate question_id {question_id}")
        annotations[question_id] = annotation
    if not annotations:
        raise ValueError(f"{path}: the 'annotations' list is empty")
    return annotations


def load_vqa_dataset(questions_path: str | Path, annotations_path: str | Path) -> VqaDataset:
    """Both files, cross-checked: the same question ids on both sides and matching image ids."""
    questions = load_vqa_questions(questions_path)
    annotations = load_vqa_annotations(annotations_path)
    question_ids = {q.question_id for q in questions}
    unannotated = sorted(question_ids - annotations.keys())
    unasked = sorted(annotations.keys() - question_ids)
    if unannotated or unasked:
        raise ValueError(
            f"{questions_path} and {annotations_path} do not pair up: {len(unannotated)} questions have no "
            f"annotation (e.g. {unannotated[:5]}), {len(unasked)} annotations have no question (e.g. "
            f"{unasked[:5]}); pass the questions and annotations files of the same split")
    for q in questions:
        if annotations[q.question_id].image_id != q.image_id:
            raise ValueError(f"question_id {q.question_id}: image_id {q.image_id} in {questions_path} but "
                             f"{annotations[q.question_id].image_id} in {annotations_path}")
    return VqaDataset(questions=questions, annotations=annotations)


def load_vqa_predictions(path: str | Path) -> dict[int, str]:
    """The official results format: a JSON list of {"question_id": int, "answer": str}."""
    data = read_json(path, "VQA predictions")
    if not isinstance(data, list):
        raise ValueError(f"{path} is not a VQA results file: expected a JSON list of "
                         "{\"question_id\", \"answer\"} objects")
    predictions: dict[int, str] = {}
    for i, entry in enumerate(data):
        where = f"{path}: [{i}]"
        question_id = require_field(entry, "question_id", int, where)
        if question_id in predictions:
            raise ValueError(f"{where}: duplicate question_id {question_id}")
        predictions[question_id] = require_field(entry, "answer", str, where)
    return predictions


def write_vqa_predictions(path: str | Path, predictions: Mapping[int, str]) -> None:
    rows = [{"question_id": qid, "answer": answer} for qid, answer in sorted(predictions.items())]
    Path(path).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
