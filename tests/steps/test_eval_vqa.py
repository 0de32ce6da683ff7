"""eval_vqa on the tiny VQA set with the tiny-random LLM: prompts, answers, official scoring, outputs."""

from __future__ import annotations

import csv

import pyarrow.parquet as pq
import pytest

from vlv.eval.eval_sets import load_split, read_eval_sets
from vlv.eval.vqa_accuracy import question_accuracy
from vlv.eval.vqa_data import load_vqa_predictions
from vlv.steps.eval_vqa import EvalVqaConfig, EvalVqaStep, build_prompt_rows, read_vqa_captions
from vlv.testing.builders import run_step

TINY_QUESTIONS, TINY_EXEMPLARS = 28, 11
CONFIG = EvalVqaConfig(llm="tiny-random", shots=[0, 4], max_new_tokens=6, batch_size=16, results_csv_rows=5)


@pytest.fixture(scope="module")
def vqa_output(eval_store, caption_eval_output):
    return run_step(eval_store, EvalVqaStep(), CONFIG, {"caption_eval": caption_eval_output}, "vqa0")


def test_every_question_is_answered_and_scored_officially(vqa_output, caption_eval_output):
    table = pq.read_table(vqa_output.local_dir / "vqa_results.parquet").to_pylist()
    assert len(table) == TINY_QUESTIONS * 2
    assert {(r["benchmark"], r["shots"]) for r in table} == {("tiny", 0), ("tiny", 4)}
    dataset = load_split(read_eval_sets(caption_eval_output.local_dir).vqa[0].eval)
    for row in table:
        human = [a.answer for a in dataset.annotations[row["question_id"]].answers]
        assert row["score"] == pytest.approx(question_accuracy(row["answer"], human, "official"))
    captions = read_vqa_captions(caption_eval_output.local_dir / "vqa_captions.parquet")[("tiny", "eval")]
    assert all(row["caption"] == captions[row["image_id"]] for row in table)
    for shots in (0, 4):
        predictions = load_vqa_predictions(vqa_output.local_dir / f"vqa_predictions_tiny_{shots}shot.json")
        assert predictions == {r["question_id"]: r["answer"] for r in table if r["shots"] == shots}


def test_metrics_are_percentages_with_the_largest_shot_as_headline(vqa_output):
    metrics = vqa_output.manifest.metrics
    rows = pq.read_table(vqa_output.local_dir / "vqa_results.parquet").to_pylist()
    for shots in (0, 4):
        scores = [r["score"] for r in rows if r["shots"] == shots]
        assert metrics[f"vqa_accuracy_tiny_{shots}shot"] == pytest.approx(100 * sum(scores) / len(scores))
        for answer_type in ("yes_no", "number", "other"):
            assert 0 <= metrics[f"vqa_accuracy_tiny_{shots}shot_{answer_type}"] <= 100
    assert metrics["vqa_accuracy"] == metrics["vqa_accuracy_tiny_4shot"]
    assert metrics["vqa_questions"] == TINY_QUESTIONS


def test_csv_outputs(vqa_output):
    with open(vqa_output.local_dir / "vqa_results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * CONFIG.results_csv_rows
    assert set(rows[0]) == {"benchmark", "shots", "question_id", "question", "caption", "answer", "score"}
    with open(vqa_output.local_dir / "vqa_scores.csv", newline="") as handle:
        scores = list(csv.DictReader(handle))
    assert [(r["shots"], r["answer_type"]) for r in scores if r["answer_type"] == "all"] == [("0", "all"),
                                                                                             ("4", "all")]
    assert {r["comparable"] for r in scores} == {"false"}
    assert sum(int(r["questions"]) for r in scores if r["shots"] == "0" and r["answer_type"] != "all") == 28
    assert set(vqa_output.manifest.artifacts) == {"vqa_scores.csv", "vqa_results.csv"}


@pytest.mark.parametrize("processing", ["official", "evalai"])
def test_answer_processing_decides_how_the_same_answers_score(processing, eval_store, caption_eval_output,
                                                               monkeypatch):
    # every prompt answered "Yes": the official script compares it as written against unanimous "yes" (0), the
    # EvalAI server normalises it first (1); where the humans disagree both normalise it
    monkeypatch.setattr("vlv.steps.eval_vqa.distributed_answers", lambda prompts, *_, **__: ["Yes"] * len(prompts))
    config = EvalVqaConfig(llm="tiny-random", shots=[0], answer_processing=processing)
    output = run_step(eval_store, EvalVqaStep(), config, {"caption_eval": caption_eval_output}, f"vqa_yes_{processing}")
    dataset = load_split(read_eval_sets(caption_eval_output.local_dir).vqa[0].eval)
    rows = pq.read_table(output.local_dir / "vqa_results.parquet").to_pylist()
    assert len(rows) == TINY_QUESTIONS and {r["answer"] for r in rows} == {"Yes"}
    for row in rows:
        human = [a.answer for a in dataset.annotations[row["question_id"]].answers]
        assert row["score"] == pytest.approx(question_accuracy("Yes", human, processing))
    # 3 disagreeing yes/no questions score 0.9 + 1 + 1; EvalAI adds the 3 unanimous "yes" questions
    expected = {"official": 2.9, "evalai": 5.9}[processing]
    assert output.manifest.metrics["vqa_accuracy"] == pytest.approx(100 * expected / TINY_QUESTIONS)


def test_k_shot_prompts_draw_k_exemplars_from_the_exemplar_split(caption_eval_output):
    sets = read_eval_sets(caption_eval_output.local_dir)
    captions = read_vqa_captions(caption_eval_output.local_dir / "vqa_captions.parquet")
    bench = sets.vqa[0]
    rows = build_prompt_rows("tiny", load_split(bench.eval), load_split(bench.exemplars), captions, [0, 3], seed=0)
    assert len(rows) == 2 * TINY_QUESTIONS
    exemplar_questions = {q.question for q in load_split(bench.exemplars).questions}
    for row in rows:
        blocks = row.prompt.split("\n\n")
        assert len(blocks) == 1 + row.shots + 1  # instruction, exemplars, the query
        assert blocks[-1].endswith(f"Question: {row.question}\nShort answer:")
        assert all(b.split("\nQuestion: ")[1].split("\n")[0] in exemplar_questions for b in blocks[1:-1])
    with pytest.raises(ValueError, match="12-shot prompts need 12 exemplars but the tiny exemplar pool has 11"):
        build_prompt_rows("tiny", load_split(bench.eval), load_split(bench.exemplars), captions, [12], seed=0)


def test_config_and_preflight(tmp_path):
    with pytest.raises(ValueError, match="shots"):
        EvalVqaConfig(shots=[4, 4])
    assert EvalVqaConfig().answer_processing == "official"
    with pytest.raises(ValueError, match="eval_vqa.answer_processing must be 'official'"):
        EvalVqaConfig(answer_processing="vqa2016")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eval_vqa.llm_path is not set"):
        EvalVqaStep().preflight(EvalVqaConfig())
    with pytest.raises(ValueError, match="no config.json"):
        EvalVqaStep().preflight(EvalVqaConfig(llm_path=str(tmp_path)))
    EvalVqaStep().preflight(EvalVqaConfig(llm="tiny-random"))
