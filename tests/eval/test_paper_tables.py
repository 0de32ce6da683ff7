"""The paper's Tables 1-5 beside a run's numbers: every paper value has a source, a run's numbers land in the row and
column they match, and what did not run says so."""

from __future__ import annotations

from vlv.eval import paper_numbers
from vlv.eval.paper_tables import NOT_OFFLINE, NOT_RUN, PAPER, RunNumbers, paper_tables, table1, table4, table5

RUN = RunNumbers(
    "this run",
    metrics={"fid_cfg1": 11.5, "fid_cfg2": 10.25, "fid_caption_gpt4o_cfg2": 9.5, "fid_caption_coco_reference_cfg2": 8.0,
             "fid_recon": 7.75, "fid_images": 8.0, "vqa_accuracy_vqav2_32shot": 41.0, "vqa_accuracy_okvqa_0shot": 12.0,
             "arena_score": 4.31, "arena_score_ci95_low": 4.16, "arena_score_ci95_high": 4.46, "arena_score_gpt4o": 4.6,
             "arena_score_gpt4o_ci95_low": 4.47, "arena_score_gpt4o_ci95_high": 4.73},
    settings={"train_stage1.num_queries": 77, "train_stage2.trainable": "mlp+llm", "train_stage2.llm_arch":
              "qwen2.5_3b", "training_images": 32, "eval_fid.t2i_model": "sd35_medium", "eval_fid.t2i_num_steps": 40,
              "eval_fid.t2i_image_size": 1024, "eval_fid.t2i_dtype": "bfloat16", "eval_vqa.llm": "endpoint (deepseek)"},
    captioners=("coco_reference", "gpt4o"))


def test_every_paper_value_names_its_source():
    tables = (paper_numbers.TABLE1, paper_numbers.TABLE2, paper_numbers.TABLE3, paper_numbers.TABLE4_QUERIES,
              paper_numbers.TABLE4_UNFREEZING, paper_numbers.TABLE5_IMAGES, paper_numbers.TABLE5_DECODER)
    values = [value for rows in tables for row in rows for value in row.values]
    known = [value for value in values if value.value is not None]
    assert len(known) == 14 and all(value.sources for value in known)
    assert all(not value.sources for value in values if value.value is None)
    assert {source.mark for value in known for source in value.sources} <= {s.mark for s in paper_numbers.SOURCES}


def test_table1_puts_each_captioner_beside_the_paper_row_of_its_name():
    table = table1([RUN])
    assert table.header == ["captioner", "numbers from", "CFG 1", "CFG 2", "CFG 3", "CFG 4"]
    assert table.row("VLV", PAPER) == ["VLV", PAPER, NOT_OFFLINE, "6.64 †‡", NOT_OFFLINE, NOT_OFFLINE]
    assert table.row("VLV", "this run") == ["VLV", "this run", 11.5, 10.25, NOT_RUN, NOT_RUN]
    assert table.row("GPT-4o", "this run") == ["GPT-4o", "this run", NOT_RUN, 9.5, NOT_RUN, NOT_RUN]
    assert table.row("Florence-2-L", "this run")[2:] == [NOT_RUN] * 4  # no file named florence2_large
    labels = [(row[0], row[1]) for row in table.rows]
    assert labels.index(("GPT-4o", "this run")) == labels.index(("GPT-4o", PAPER)) + 1
    assert labels[-1] == ("COCO reference captions", "this run") and table.rows[-1][3] == 8.0  # only this run has it
    assert "this run: sd35_medium, 40 steps, 1024 px, bfloat16, 8 images." in table.notes


def test_tables_2_and_3_read_the_arena_and_vqa_metrics():
    _, arena, vqa, _, _ = paper_tables([RUN])
    assert arena.row("VLV", PAPER) == ["VLV", PAPER, NOT_OFFLINE, NOT_OFFLINE]
    assert arena.row("VLV", "this run") == ["VLV", "this run", 4.31, "4.16 - 4.46"]
    assert arena.row("GPT-4o", "this run") == ["GPT-4o", "this run", 4.6, "4.47 - 4.73"]
    assert arena.row("Qwen2.5-VL-7B", "this run")[2:] == [NOT_RUN, NOT_RUN]
    assert vqa.header[2:] == ["VQAv2 0-shot", "VQAv2 4-shot", "VQAv2 32-shot", "OK-VQA 0-shot", "OK-VQA 4-shot",
                              "OK-VQA 32-shot"]
    assert vqa.row("VLV", PAPER)[4] == "63.60 †‡" and vqa.row("VLV", PAPER)[7] == "60.25 ‡"
    assert vqa.row("VLV", "this run") == ["VLV", "this run", NOT_RUN, NOT_RUN, 41.0, 12.0, NOT_RUN, NOT_RUN]
    assert vqa.row("Gemini 2.0 Flash", "this run")[2:] == [NOT_RUN] * 6
    assert "this run: answers by endpoint (deepseek)." in vqa.notes


def test_table4_and_5_match_the_run_by_its_settings():
    ablations = table4([RUN])
    assert ablations.row("77 queries", "this run") == ["77 queries", "this run", 7.75]
    assert ablations.row("MLP + LLM", "this run") == ["MLP + LLM", "this run", 10.25]  # caption FID at CFG 2
    assert ablations.row("MLP + LLM + VLV encoder", PAPER) == ["MLP + LLM + VLV encoder", PAPER, "6.64 †"]
    assert [row[0] for row in ablations.rows if row[1] == "this run"] == ["77 queries", "MLP + LLM"]
    scaling = table5([RUN])
    assert scaling.row("32 images", "this run") == ["32 images", "this run", 11.5, 10.25, NOT_RUN, NOT_RUN]
    assert scaling.row("Qwen2.5-3B", "this run")[2:4] == [11.5, 10.25]
    assert scaling.row("Qwen2.5-0.5B", PAPER)[2:] == [NOT_OFFLINE] * 4


def test_a_run_without_the_steps_shows_not_run_and_a_sweep_gets_a_row_per_point():
    empty = RunNumbers("bare", {}, {})
    ablations = table4([empty])
    assert ablations.row(NOT_RUN, "bare") == [NOT_RUN, "bare", NOT_RUN]
    points = [RunNumbers(f"queries={n}", {"fid_recon": float(n)}, {"train_stage1.num_queries": n}) for n in (16, 32)]
    table = table4(points)
    assert table.row("16 queries", "queries=16")[2] == 16.0 and table.row("32 queries", "queries=32")[2] == 32.0
    assert not [row for row in table.rows if row[0] == "16 queries" and row[1] == "queries=32"]
