"""End to end: the whole paper_mini pipeline through the CLI, once per session (fixture `paper_mini_store`).

The paper preset's loaders, formats and settings on miniature random models: every step must publish, with the
values the paper path produces (bf16 stage 2, a FID per CFG value, VQA at 0/4/32 shots, the report's caveat).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from vlv.engine.manifest import verify_files
from vlv.engine.store import RunStore
from vlv.pipeline import step_names
from vlv.steps.report import PAPER_MINI_CAVEAT
from vlv.testing.builders import published_outputs

ALL_STEPS = step_names()


def _outputs(store: Path) -> dict[str, Path]:
    return published_outputs(store, ALL_STEPS)


def _child_runs(store: Path) -> dict[str, object]:
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("vlv").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("vlv.pipeline") == "full_run")
    assert parent.data.tags["vlv.preset"] == "paper_mini"
    return {r.data.tags["vlv.step"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}


def test_every_step_is_executed_and_published_intact(paper_mini_store):
    store = RunStore(str(paper_mini_store))
    for step, folder in _outputs(paper_mini_store).items():
        manifest = store.read_manifest(step, folder.name)
        assert manifest.files and verify_files(folder, manifest) == [], step
    runs = _child_runs(paper_mini_store)
    assert set(runs) == set(ALL_STEPS) and {r.data.tags["vlv.status"] for r in runs.values()} == {"executed"}


def test_data_steps_read_the_laion_metadata_and_gemini_output(paper_mini_store):
    runs = {step: run.data.metrics for step, run in _child_runs(paper_mini_store).items()}
    assert runs["prepare_metadata"]["rows_kept"] < runs["prepare_metadata"]["rows_read"]  # the paper's filter
    assert runs["download"]["images_ok"] == 32 and runs["download"]["images_failed_http_404"] == 2
    assert runs["aesthetic_filter"]["images_kept"] == runs["aesthetic_filter"]["images_scored"] == 32  # keep=all
    assert runs["ingest_captions"]["captions_ok"] > 0
    for reason in ("malformed_json", "error_row", "blocked", "max_tokens", "duplicate_key", "unknown_key", "bad_key"):
        assert runs["ingest_captions"][f"quarantined_{reason}"] >= 1, reason
    shards = sorted((_outputs(paper_mini_store)["download"] / "shards").glob("*.tar"))
    assert len(shards) == 5  # 37 URLs in shards of 8


def test_stage2_trained_in_bf16_and_stage1_in_fp32(paper_mini_store):
    from safetensors import safe_open

    out = _outputs(paper_mini_store)
    for step, name, dtype in (("train_stage1", "stage1_trainable.safetensors", "F32"),
                              ("train_stage2", "captioner_trainable.safetensors", "BF16")):
        with safe_open(str(out[step] / name), "pt") as weights:
            dtypes = {weights.get_slice(key).get_dtype() for key in weights.keys()}
        assert dtypes == {dtype}, step
    runs = _child_runs(paper_mini_store)
    for step in ("train_stage1", "train_stage2"):
        metrics = runs[step].data.metrics
        assert metrics["steps"] == 3 and metrics["samples_per_s"] > 0
        assert metrics["optimizer_state_bytes_per_rank"] > 0  # ZeRO-2 shards of the Adam state


def test_fid_has_a_row_per_cfg_value_and_is_marked_not_comparable(paper_mini_store):
    folder = _outputs(paper_mini_store)["eval_fid"]
    rows = list(csv.DictReader(open(folder / "fid.csv", encoding="utf-8")))
    for kind in ("reconstruction", "caption"):
        assert [float(row["guidance_scale"]) for row in rows if row["kind"] == kind] == [1.0, 2.0, 3.0, 4.0], kind
    captions = {(row["generator"], row["captioner"]) for row in rows if row["kind"] == "caption"}
    assert captions == {("sd35_medium", "vlv")}
    assert all(row["comparable"] == "false" and float(row["fid"]) > 0 for row in rows)
    metrics = _child_runs(paper_mini_store)["eval_fid"].data.metrics
    assert {f"fid_{kind}cfg{k}" for kind in ("", "recon_") for k in (1, 2, 3, 4)} <= set(metrics)
    assert metrics["fid_comparable"] == 0 and metrics["fid_images"] == 8


def test_vqa_is_scored_at_0_4_and_32_shots_on_both_benchmarks(paper_mini_store):
    metrics = _child_runs(paper_mini_store)["eval_vqa"].data.metrics
    for bench in ("vqav2", "okvqa"):
        for shots in (0, 4, 32):
            assert 0 <= metrics[f"vqa_accuracy_{bench}_{shots}shot"] <= 100
    results = pq.read_table(_outputs(paper_mini_store)["eval_vqa"] / "vqa_results.parquet").to_pylist()
    assert {(row["benchmark"], row["shots"]) for row in results} == {
        (bench, shots) for bench in ("vqav2", "okvqa") for shots in (0, 4, 32)}
    assert metrics["vqa_questions"] == 48 == len(results) / 3  # 24 a benchmark, each at three shot counts
    scores = list(csv.DictReader(open(_outputs(paper_mini_store)["eval_vqa"] / "vqa_scores.csv")))
    assert {row["comparable"] for row in scores} == {"false"}


def test_captioner_loads_and_captions_a_photo(paper_mini_store, tmp_path):
    import skimage.data
    from PIL import Image

    from vlv.inference import caption_images
    from vlv.models.trained_folder import read_captioner_config

    photo = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(photo)
    folder = _outputs(paper_mini_store)["train_stage2"]
    assert read_captioner_config(folder).llm_arch == "qwen2.5_3b_mini"
    captions = caption_images([photo], folder, max_new_tokens=6)
    assert len(captions) == 1 and isinstance(captions[0], str)
    assert json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())["tokenizer_class"] == \
        "Qwen2Tokenizer"


def test_report_carries_the_paper_mini_caveat(paper_mini_store):
    html = (_outputs(paper_mini_store)["report"] / "report.html").read_text(encoding="utf-8")
    assert html.count('class="caveat"') == 1 and "paper_mini preset" in html
    assert PAPER_MINI_CAVEAT.split(":")[0] in html and "MEAN NOTHING" in html
