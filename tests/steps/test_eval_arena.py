"""eval_arena: the tiny preset's self-generated judge file, and a paper-style run from files the test writes."""

from __future__ import annotations

import base64
import csv
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlv.cli import main
from vlv.data.caption_synthetic import response_line
from vlv.engine.manifest import Manifest, list_files
from vlv.engine.store import RunStore
from vlv.eval.arena import bootstrap_interval
from vlv.eval.arena_tiny import write_tiny_judge_output
from vlv.eval.eval_sets import read_eval_sets
from vlv.presets import paper, tiny
from vlv.run import RunOptions, plan_run
from vlv.steps.eval_arena import ArenaCaptionerConfig, EvalArenaConfig, EvalArenaStep
from vlv.testing.builders import run_step
from vlv.testing.step_inputs import CAPTION_EVAL_IMAGE_IDS, fake_caption_eval


def _reply(key: str, score) -> str:
    return response_line(key, json.dumps({"justification": "as seen", "score": score}))


@pytest.fixture(scope="module")
def tiny_arena(eval_store, caption_eval_output):
    config = EvalArenaConfig(num_images=6, generate_tiny=True, bootstrap_resamples=2000)
    return run_step(eval_store, EvalArenaStep(), config, {"caption_eval": caption_eval_output}, "arena0")


def test_tiny_arena_ingests_its_own_judge_file_and_quarantines_the_faulty_lines(tiny_arena, tmp_path):
    out = tiny_arena.local_dir
    pairs = pq.read_table(out / "arena_pairs.parquet").to_pylist()
    assert len(pairs) == 12 and {p["captioner"] for p in pairs} == {"vlv", "reference"}
    keys = [p["key"] for p in pairs]
    expected = write_tiny_judge_output(tmp_path / "judge.jsonl", keys, seed=0)  # what the step wrote
    judgements = pq.read_table(out / "arena_judgements.parquet").to_pylist()
    assert {j["key"]: j["score"] for j in judgements} == expected.scores and len(judgements) == 8
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    reasons = {}
    for row in quarantine:
        reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
    assert reasons == {"bad_score": 3, "error_row": 1, "malformed_json": 1, "unknown_key": 1, "duplicate_key": 1}
    details = sorted(r["detail"] for r in quarantine if r["reason"] == "bad_score")
    assert details == ["no score in the reply: 'I cannot rate this caption.'", "score 4.5 is not an integer",
                       "score 7 is outside 0-6"]
    metrics = tiny_arena.manifest.metrics
    assert (metrics["arena_pairs"], metrics["arena_judged"], metrics["arena_quarantined"]) == (12, 8, 7)
    assert metrics["arena_quarantined_bad_score"] == 3 and metrics["arena_quarantined_error_row"] == 1
    for captioner, metric in (("vlv", "arena_score"), ("reference", "arena_score_reference")):
        scores = [expected.scores[p["key"]] for p in pairs if p["captioner"] == captioner and p["key"] in
                  expected.scores]
        mean, low, high = bootstrap_interval(scores, resamples=2000, seed=0)
        assert (metrics[metric], metrics[f"{metric}_ci95_low"], metrics[f"{metric}_ci95_high"]) == (mean, low, high)
    with open(out / "arena_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["captioner"] for r in rows] == ["vlv", "reference"] and {r["comparable"] for r in rows} == {"false"}
    assert float(rows[0]["mean_score"]) == pytest.approx(metrics["arena_score"], abs=1e-4)
    assert (out / "arena_scores.png").read_bytes().startswith(b"\x89PNG")
    assert set(tiny_arena.manifest.artifacts) == {"arena_scores.csv", "arena_scores.png"}


def test_tiny_arena_requests_carry_each_image_and_caption(tiny_arena, caption_eval_output):
    pairs = {p["key"]: p for p in pq.read_table(tiny_arena.local_dir / "arena_pairs.parquet").to_pylist()}
    images_dir = Path(read_eval_sets(caption_eval_output.local_dir).images_dir)
    lines = [json.loads(line) for line in (tiny_arena.local_dir / "arena_requests.jsonl").read_text().splitlines()]
    assert [line["key"] for line in lines] == list(pairs)
    for line in lines:
        pair = pairs[line["key"]]
        text, image = line["request"]["contents"][0]["parts"]
        assert f"Caption:\n{pair['caption']}\n" in text["text"]
        assert base64.b64decode(image["inline_data"]["data"]) == (images_dir / pair["file_name"]).read_bytes()
    references = [p for p in pairs.values() if p["captioner"] == "reference"]
    captions = {r["image_id"]: r["references"][0] for r in caption_eval_output.read_table("captions.parquet")
                .to_pylist()}
    assert all(p["caption"] == captions[p["image_id"]] for p in references)


def test_a_paper_style_run_scores_each_captioner_from_the_files(tmp_path):
    upstream = fake_caption_eval(tmp_path / "caption_eval")
    (tmp_path / "gpt4o.jsonl").write_text("".join(json.dumps({"image_id": i, "caption": f"GPT caption {i}"}) + "\n"
                                                  for i in CAPTION_EVAL_IMAGE_IDS[:5]))
    (tmp_path / "qwen.csv").write_text("file_name,caption\n" + "".join(
        f"COCO_val2014_{i:012d}.jpg,Qwen caption {i}\n" for i in CAPTION_EVAL_IMAGE_IDS[1:]))
    # judge replies: vlv scores 4, gpt4o 5 (one reply 7: quarantined), qwen 3; image 102 to 105 are the ones all have
    given = {"vlv": 4, "gpt4o": 5, "qwen25vl7b": 3}
    lines = [_reply(f"{name}-{i}", score) for name, score in given.items() for i in CAPTION_EVAL_IMAGE_IDS[1:5]]
    lines[5] = _reply("gpt4o-103", 7)
    (tmp_path / "judge.jsonl").write_text("\n".join(lines) + "\n")
    config = EvalArenaConfig(num_images=4, judge_output=str(tmp_path / "judge.jsonl"), other_captioners=[
        ArenaCaptionerConfig("gpt4o", str(tmp_path / "gpt4o.jsonl")),
        ArenaCaptionerConfig("qwen25vl7b", str(tmp_path / "qwen.csv"))])
    EvalArenaStep().preflight(config)
    output = run_step(RunStore(str(tmp_path / "store")), EvalArenaStep(), config, {"caption_eval": upstream}, "a1",
                      preset="paper")
    metrics = output.manifest.metrics
    assert (metrics["arena_score"], metrics["arena_score_gpt4o"], metrics["arena_score_qwen25vl7b"]) == (4, 5, 3)
    assert metrics["arena_score_gpt4o_ci95_low"] == metrics["arena_score_gpt4o_ci95_high"] == 5  # all equal
    assert (metrics["arena_pairs"], metrics["arena_judged"], metrics["arena_quarantined_bad_score"]) == (12, 11, 1)
    pairs = pq.read_table(output.local_dir / "arena_pairs.parquet").to_pylist()
    assert sorted({p["image_id"] for p in pairs}) == [102, 103, 104, 105]
    assert next(p["caption"] for p in pairs if p["key"] == "qwen25vl7b-104") == "Qwen caption 104"
    with open(output.local_dir / "arena_scores.csv", newline="") as handle:
        rows = {r["captioner"]: r for r in csv.DictReader(handle)}
    assert (rows["gpt4o"]["scored"], rows["gpt4o"]["pairs"], rows["gpt4o"]["comparable"]) == ("3", "4", "true")
    assert not (output.local_dir / "arena_requests.jsonl").exists()


def test_preflight_names_the_setting_and_the_request_command(tmp_path):
    with pytest.raises(ValueError, match="eval_arena.judge_output is empty: write the judge requests with `vlv arena "
                                         "request --preset paper --output arena_requests.jsonl`"):
        EvalArenaStep().preflight(paper().eval_arena)
    assert paper().eval_arena.num_images == 200 and tiny().eval_arena.generate_tiny
    EvalArenaStep().preflight(tiny().eval_arena)
    with pytest.raises(ValueError, match="eval_arena.judge_output: '.*nothing-\\*.jsonl' matches no file"):
        EvalArenaStep().preflight(EvalArenaConfig(judge_output=str(tmp_path / "nothing-*.jsonl")))
    with pytest.raises(ValueError, match="eval_arena.judge_output is ignored while eval_arena.generate_tiny=true"):
        EvalArenaConfig(generate_tiny=True, judge_output="/data/judge.jsonl")
    for name in ("vlv", "GPT-4o", ""):
        with pytest.raises(ValueError, match="other_captioners\\[\\].name must be lowercase"):
            ArenaCaptionerConfig(name, "/data/x.jsonl")


def test_cli_writes_the_requests_of_the_planned_caption_eval(tmp_path, caption_eval_output, capsys):
    options = RunOptions(config=tiny(), store_uri=str(tmp_path / "store"))
    args = ["arena", "request", "--store", options.store_uri, "--output", str(tmp_path / "r.jsonl")]
    assert main(args) == 2
    assert "no published caption_eval output for this config" in capsys.readouterr().err
    store, plan = plan_run(options)
    planned = next(p for p in plan if p.name == "caption_eval")
    staging = store.prepare_staging("caption_eval", planned.key, keep_existing=False)
    shutil.copytree(caption_eval_output.local_dir, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        "manifest.json"))
    store.publish(staging, Manifest(step="caption_eval", key=planned.key, code_version="2", config={},
                                    upstream=planned.upstream_keys, files=list_files(staging), metrics={}))
    assert main(args) == 0
    assert "wrote 12 judge requests" in capsys.readouterr().out
    keys = [json.loads(line)["key"] for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(keys) == 12 and {k.split("-")[0] for k in keys} == {"vlv", "reference"}
