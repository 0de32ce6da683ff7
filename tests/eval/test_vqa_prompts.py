"""0-shot and k-shot VQA prompts: exact format, deterministic exemplar choice, pure functions."""

from __future__ import annotations

import pytest

from vlv.eval.vqa_prompts import (
    INSTRUCTION,
    VqaExemplar,
    VqaQuery,
    build_vqa_prompts,
    exemplars_from_dataset,
    extract_short_answer,
    format_vqa_prompt,
    select_exemplars,
)

POOL = [VqaExemplar(f"caption {i}", f"question {i}?", f"answer {i}") for i in range(10)]


def test_zero_shot_prompt_is_exact():
    text = format_vqa_prompt("A red\nbus on a street.", "What color is the bus?")
    assert text == (f"{INSTRUCTION}\n\nDescription: A red bus on a street.\nQuestion: What color is the bus?\n"
                    "Short answer:")


def test_k_shot_prompt_lists_exemplars_with_answers_then_the_query():
    text = format_vqa_prompt("cap", "q?", POOL[:2])
    assert text == (f"{INSTRUCTION}\n\n"
                    "Description: caption 0\nQuestion: question 0?\nShort answer: answer 0\n\n"
                    "Description: caption 1\nQuestion: question 1?\nShort answer: answer 1\n\n"
                    "Description: cap\nQuestion: q?\nShort answer:")


def test_exemplar_choice_is_deterministic_per_question_and_seed():
    first = select_exemplars(POOL, 4, seed=0, question_id=123)
    assert first == select_exemplars(list(POOL), 4, seed=0, question_id=123)
    assert len(set(first)) == 4 and set(first) <= set(POOL)
    others = {select_exemplars(POOL, 4, seed=0, question_id=q) for q in range(20)}
    assert len(others) > 1  # different questions draw different exemplars
    assert select_exemplars(POOL, 4, seed=1, question_id=123) != first


def test_prompts_do_not_depend_on_batch_order():
    queries = [VqaQuery(q, f"c{q}", f"q{q}?") for q in (5, 9, 2)]
    forward = {p.question_id: p.text for p in build_vqa_prompts(queries, POOL, num_shots=3, seed=7)}
    backward = {p.question_id: p.text for p in build_vqa_prompts(queries[::-1], POOL, num_shots=3, seed=7)}
    assert forward == backward
    assert all(text.count("Short answer:") == 4 for text in forward.values())


def test_zero_shot_needs_no_pool_and_too_many_shots_fail():
    prompts = build_vqa_prompts([VqaQuery(1, "c", "q?")], [], num_shots=0, seed=0)
    assert prompts[0].num_shots == 0 and "Short answer: " not in prompts[0].text
    with pytest.raises(ValueError, match="32-shot prompts need at least 32 exemplars; the exemplar split has 10"):
        select_exemplars(POOL, 32, seed=0, question_id=1)


def test_extract_short_answer_takes_the_first_line():
    assert extract_short_answer(" red\n\nDescription: a bus") == "red"
    assert extract_short_answer("\n  two dogs  \nQuestion:") == "two dogs"
    assert extract_short_answer("   ") == ""


def test_exemplars_from_dataset_need_captions(tiny_eval_sets):
    from vlv.eval.vqa_data import load_vqa_dataset

    sets = tiny_eval_sets
    dataset = load_vqa_dataset(sets.exemplar_vqa.questions_json, sets.exemplar_vqa.annotations_json)
    with pytest.raises(ValueError, match="no caption for exemplar images"):
        exemplars_from_dataset(dataset, {})
    pool = exemplars_from_dataset(dataset, {i: f"caption of {i}" for i in dataset.image_ids()})
    assert len(pool) == len(dataset)
    assert pool[0] == VqaExemplar("caption of 101", "What is the title of the page?", "region based segmentation")
