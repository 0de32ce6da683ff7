"""The ingest_captions step through the executor, on a fake aesthetic_filter output (fixture `kept_output`)."""

from __future__ import annotations

import csv
import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from vlv.data.caption_formats import QUARANTINE_REASONS
from vlv.data.caption_synthetic import vertex_line
from vlv.steps.ingest_captions import IngestCaptionsConfig, IngestCaptionsStep
from vlv.testing.step_inputs import KEPT_KEYS, run_ingest_captions


def test_tiny_generation_end_to_end(tmp_path, kept_output):
    manifest, out = run_ingest_captions(tmp_path, kept_output, IngestCaptionsConfig(generate_tiny=True, seed=3))
    expected = {"error_row": 1, "blocked": 1, "empty": 1, "max_tokens": 1, "malformed_json": 1, "unknown_key": 1,
                "bad_key": 1, "duplicate_key": 1}
    for reason in QUARANTINE_REASONS:
        assert manifest.metrics[f"quarantined_{reason}"] == expected.get(reason, 0), reason
    assert manifest.metrics["captions_ok"] == len(KEPT_KEYS) - 4
    assert manifest.metrics["captions_quarantined"] == 8
    assert manifest.metrics["rows_read"] == len(KEPT_KEYS) + 4
    assert manifest.metrics["kept_images_captioned"] == len(KEPT_KEYS) - 4
    assert set(manifest.artifacts) == {"caption_length_histogram.png", "quarantine_summary.csv"}
    assert {f.path for f in manifest.files} >= {"captions.parquet", "quarantine.parquet", "tiny_gemini_output.jsonl",
                                                 "caption_length_histogram.png", "quarantine_summary.csv"}

    captions = pq.read_table(out / "captions.parquet")
    assert captions.column_names == ["key", "caption", "caption_chars", "finish_reason", "prompt_tokens",
                                     "output_tokens", "shard", "url", "score"]
    rows = {r["key"]: r for r in captions.to_pylist()}
    first = rows[KEPT_KEYS[0]]  # the BOM line, kept, joined to its kept row
    assert first["shard"] == "00000.tar" and first["url"].endswith(f"{KEPT_KEYS[0]}.jpg") and first["score"] == 5.0
    assert f"LAION text of image {KEPT_KEYS[0]}" in first["caption"] and first["caption_chars"] == len(first["caption"])
    assert all(len(r["caption"].split(". ")) >= 4 for r in rows.values()), "captions are multi-sentence"

    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert {q["source"] for q in quarantine} == {"tiny_gemini_output.jsonl"}
    lines = (out / "tiny_gemini_output.jsonl").read_bytes().split(b"\n")
    for record in quarantine:  # every line number points at the line that holds the problem
        line = lines[record["line_number"] - 1]
        if record["reason"] != "malformed_json":
            assert json.loads(line)["key"] == record["key"]
    with open(out / "quarantine_summary.csv") as handle:
        summary = {row["reason"]: int(row["count"]) for row in csv.DictReader(handle)}
    assert summary == {reason: expected.get(reason, 0) for reason in QUARANTINE_REASONS}
    assert (out / "caption_length_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_user_source_in_vertex_format(tmp_path, kept_output):
    source = tmp_path / "vertex"
    source.mkdir()
    (source / "predictions_1.jsonl").write_text(
        "\n".join([vertex_line(KEPT_KEYS[0], "A cat on a mat."),
                   vertex_line(KEPT_KEYS[1], "", status="Quota exceeded")]) + "\n")
    (source / "predictions_2.jsonl").write_text(vertex_line(KEPT_KEYS[2], "A dog.", key_in="custom_id") + "\n")
    manifest, out = run_ingest_captions(tmp_path, kept_output, IngestCaptionsConfig(source=str(source)))
    assert manifest.metrics["captions_ok"] == 2 and manifest.metrics["quarantined_error_row"] == 1
    assert pq.read_table(out / "captions.parquet").column("key").to_pylist() == [KEPT_KEYS[0], KEPT_KEYS[2]]


def test_preflight_names_the_source(tmp_path):
    step = IngestCaptionsStep()
    with pytest.raises(ValueError, match="ingest_captions.source is empty"):
        step.preflight(IngestCaptionsConfig())
    with pytest.raises(ValueError, match="ingest_captions.source: '.*missing-\\*.jsonl' matches no file"):
        step.preflight(IngestCaptionsConfig(source=str(tmp_path / "missing-*.jsonl")))
    step.preflight(IngestCaptionsConfig(generate_tiny=True))


def test_no_valid_caption_is_an_error(tmp_path, kept_output):
    source = tmp_path / "wrong.jsonl"
    source.write_text(json.dumps({"key": KEPT_KEYS[0], "text": "a caption in the wrong field"}) + "\n")
    config = IngestCaptionsConfig(source=str(source), format="jsonl")
    with pytest.raises(ValueError, match="no caption passed validation.*missing_field=1.*caption_field"):
        run_ingest_captions(tmp_path, kept_output, config)
    assert dataclasses.replace(config, caption_field="text").caption_field == "text"
