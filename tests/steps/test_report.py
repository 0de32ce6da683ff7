"""report: one self-contained HTML page from fake upstream outputs and a real MLflow loss history."""

from __future__ import annotations

import base64
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlv.engine.store import RunStore
from vlv.eval.eval_sets import EVAL_SETS_FILE
from vlv.steps.caption_eval import CaptionEvalConfig, VqaBenchmarkConfig, resolve_eval_sets
from vlv.steps.report import TINY_CAVEAT, ReportConfig, ReportStep
from vlv.testing.builders import publish_output, run_step

LOSSES = [1.0, 0.8, 0.55, 0.5]
DATA_METRICS = {
    "prepare_metadata": {"rows_read": 100.0, "rows_kept": 60.0},
    "download": {"images_ok": 50.0, "images_failed": 10.0},
    "aesthetic_filter": {"images_scored": 48.0, "images_kept": 36.0},
    "ingest_captions": {"captions_ok": 30.0, "captions_quarantined": 6.0},
}
FID_METRICS = {"fid": 123.4, "fid_recon": 200.5, "fid_recon_cfg1": 210.75, "fid_recon_cfg2": 200.5,
               "fid_cfg1": 150.25, "fid_cfg2": 123.4, "fid_caption_gpt4o_cfg1": 140.5, "fid_caption_gpt4o_cfg2": 99.5,
               "fid_caption_gpt4o": 99.5, "fid_images": 8.0}
VQA_METRICS = {"vqa_accuracy": 12.5, "vqa_accuracy_tiny_0shot": 10.0, "vqa_accuracy_tiny_4shot": 12.5,
               "vqa_accuracy_tiny_4shot_yes_no": 30.0, "vqa_questions": 28.0}


def _png(folder, name: str, color: int) -> None:
    Image.fromarray(np.full((20, 40, 3), color, dtype=np.uint8)).save(folder / name)


def _caption_eval_folder(folder) -> None:
    sets = resolve_eval_sets(CaptionEvalConfig(tiny_sets=True, vqa=[VqaBenchmarkConfig(name="tiny")]), folder)
    (folder / EVAL_SETS_FILE).write_text(sets.to_json())
    pq.write_table(pa.table({
        "image_id": pa.array([1, 2], pa.int64()), "file_name": ["astronaut.png", "chelsea.png"],
        "caption": ["A <b>bold</b> astronaut & a flag.", ""],
        "references": [["An astronaut in orange."], ["A tabby cat."]],
    }), folder / "captions.parquet")


def _upstream(store: RunStore, tracking_uri: str, *, comparable: bool) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(f"report-test-{comparable}")
    run_id = client.create_run(experiment).info.run_id
    for step, loss in enumerate(LOSSES, start=1):
        client.log_metric(run_id, "loss", loss, step=step)
    suffix = "c" if comparable else "t"
    inputs = {name: publish_output(store, name, f"{name[:4]}{suffix}", lambda f: None, metrics=metrics)
              for name, metrics in DATA_METRICS.items()}
    inputs["train_stage1"] = publish_output(store, "train_stage1", f"s1{suffix}",
                                            lambda f: _png(f, "reconstruction_grid.png", 40), mlflow_run_id=run_id,
                                            config={"model": {"num_queries": 77}})
    inputs["train_stage2"] = publish_output(store, "train_stage2", f"s2{suffix}", lambda f: None,
                                            config={"model": {"trainable": "mlp+llm", "llm_arch": "tiny_qwen2"}})
    inputs["caption_eval"] = publish_output(store, "caption_eval", f"ce{suffix}", _caption_eval_folder)
    inputs["eval_fid"] = publish_output(
        store, "eval_fid", f"fid{suffix}", lambda f: (_png(f, "recon_grid.png", 90), _png(f, "caption_grid.png", 160)),
        metrics={**FID_METRICS, "fid_comparable": 1.0 if comparable else 0.0},
        config={"t2i_model": "tiny", "t2i_num_steps": 2, "t2i_image_size": 64, "t2i_dtype": "float32",
                "recon_scheduler": "ddpm", "recon_num_steps": 2, "recon_cfg_scales": [1.0, 2.0], "headline_cfg": 2.0,
                "other_captioners": [{"name": "gpt4o", "path": "/data/gpt4o.jsonl"}], "reference_captions": False})
    inputs["eval_vqa"] = publish_output(store, "eval_vqa", f"vqa{suffix}", lambda f: None, metrics=VQA_METRICS,
                                        config={"llm": "tiny-random", "shots": [0, 4], "answer_processing": "official"})
    return inputs


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    store, tracking_uri = RunStore(str(root / "store")), f"sqlite:///{root / 'mlflow.db'}"
    inputs = _upstream(store, tracking_uri, comparable=False)
    output = run_step(store, ReportStep(), ReportConfig(sample_captions=2), inputs, "rep0",
                      tracking_uri=tracking_uri)
    return output, (output.local_dir / "report.html").read_text(encoding="utf-8")


def _row(html: str, *cells: str) -> str:
    """The rest of the table row whose first cells are `cells` (HTML of what follows them)."""
    head = "".join(f"<td>{cell}</td>" for cell in cells)
    return re.search(rf"<tr>{re.escape(head)}(.*?)</tr>", html).group(1)


def test_this_runs_numbers_are_listed(tiny_report):
    _, html = tiny_report
    assert _row(html, "caption FID, CFG 2") == '<td class="num">123.40</td>'
    assert _row(html, "caption FID of gpt4o&#x27;s captions, CFG 1") == '<td class="num">140.50</td>'
    assert "<td>reconstruction FID (stage 1)</td><td class=\"num\">200.50</td>" in html
    assert "<td>reconstruction FID, CFG 1</td><td class=\"num\">210.75</td>" in html
    assert "Reconstructions sampled with DDPM (2 steps), CFG [1.0, 2.0], headline at CFG 2." in html
    assert "official answer processing" in html
    assert "<td>tiny accuracy %, 4-shot</td><td class=\"num\">12.50</td>" in html
    assert "yes_no" not in html  # per-answer-type metrics stay out of the headline table
    assert "tiny (2 steps) on 8 images" in html


def test_the_papers_tables_carry_this_runs_numbers_in_the_matching_cells(tiny_report):
    _, html = tiny_report
    for number in range(1, 6):
        assert f"<h3>Table {number}. " in html
    assert _row(html, "VLV", "paper") == "<td>not available offline</td><td>6.64 †‡</td>" \
                                         "<td>not available offline</td><td>not available offline</td>"
    assert _row(html, "VLV", "this run") == '<td class="num">150.25</td><td class="num">123.40</td>' \
                                            "<td>not run</td><td>not run</td>"  # Table 1, CFG 1-4
    assert _row(html, "GPT-4o", "this run").startswith('<td class="num">140.50</td><td class="num">99.50</td>')
    assert _row(html, "77 queries", "this run") == '<td class="num">200.50</td>'  # Table 4: fid_recon
    assert _row(html, "MLP + LLM", "this run") == '<td class="num">123.40</td>'  # caption FID at CFG 2
    assert _row(html, "36 images", "this run").startswith('<td class="num">150.25</td>')
    assert _row(html, "tiny_qwen2", "this run").startswith('<td class="num">150.25</td>')  # Table 5's decoder rows
    assert "63.60 †‡" in html and "60.25 ‡" in html and "‡ the reference numbers" in html
    assert "NOT comparable (random models)" in html


def test_tiny_caveat_is_prominent(tiny_report):
    _, html = tiny_report
    assert html.count('class="caveat"') == 1
    assert html.index('class="caveat"') < html.index("<h2>")  # above every section
    assert TINY_CAVEAT.split(":")[0] in html and "MEAN NOTHING" in html
    assert "this run (not comparable)" in html


def test_funnel_curves_grids_and_captions_are_embedded(tiny_report):
    output, html = tiny_report
    assert "<td>LAION metadata rows read</td><td class=\"num\">100</td><td>100.0%</td>" in html
    assert "<td>with an accepted caption</td><td class=\"num\">30</td><td>30.0%</td>" in html
    assert "train_stage2: no MLflow run recorded" in html
    assert output.manifest.metrics["report_curves"] == 1
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 1 + 1 + 3 + 2  # funnel chart, one loss curve, three grids, two thumbnails
    assert all(base64.b64decode(data).startswith(b"\x89PNG") for data in images)
    assert "A &lt;b&gt;bold&lt;/b&gt; astronaut &amp; a flag." in html and "<b>bold</b>" not in html
    assert "(empty)" in html and "An astronaut in orange." in html
    assert not re.search(r'(src|href)="https?://', html)  # self-contained
    assert output.manifest.artifacts == ("report.html",)


def _arena_folder(folder) -> None:
    (folder / "arena_scores.csv").write_text(
        "captioner,pairs,scored,mean_score,ci95_low,ci95_high,comparable\n"
        "vlv,200,198,4.3131,4.1566,4.4646,true\ngpt4o,200,200,4.6000,4.4650,4.7300,true\n")
    _png(folder, "arena_scores.png", 200)


def test_paper_run_with_comparable_numbers_has_no_caveat(tmp_path):
    store, tracking_uri = RunStore(str(tmp_path / "store")), f"sqlite:///{tmp_path / 'mlflow.db'}"
    inputs = _upstream(store, tracking_uri, comparable=True)
    inputs["eval_arena"] = publish_output(store, "eval_arena", "arena1", _arena_folder)
    output = run_step(store, ReportStep(), ReportConfig(sample_captions=0), inputs, "rep1", preset="paper",
                      tracking_uri=tracking_uri)
    html = (output.local_dir / "report.html").read_text(encoding="utf-8")
    assert 'class="caveat"' not in html and "this run</th>" in html
    assert "<h2>Sample captions</h2>" not in html
    assert "<h2>Caption arena (judge scores 0-6)</h2>" in html and "Not comparable" not in html
    assert '<td>vlv</td><td class="num">198</td><td class="num">200</td><td class="num">4.31</td>' \
           "<td>4.16 - 4.46</td>" in html
    assert "<td>gpt4o</td>" in html
