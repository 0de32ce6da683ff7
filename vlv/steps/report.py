"""Step `report`: one self-contained HTML page (`report.html`) summarising a pipeline run.

Sections: results beside the paper's numbers (docs/DESIGN.md section 6), the data funnel (from the upstream manifests'
metrics), training loss curves (metric histories of the training steps' MLflow runs, read through
`vlv.tracking.metric_history`), reconstruction and caption-FID grids, sample captions with their images, and
which output of each step the page was built from. Runs on the `tiny` and `paper_mini` presets carry a prominent
caveat: numbers from randomly initialised models mean nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from vlv.engine.step import Resources, Step, StepContext, StepOutput, StepResult
from vlv.eval.report_html import Cell, bar_chart_png, esc, line_plot_png, page, png_img, table
from vlv.paths import safe_child

# The paper's numbers (arXiv 2507.07104 v2; docs/DESIGN.md section 6).
PAPER_CAPTION_FID_CFG2 = {"VLV (paper)": 6.64, "GPT-4o": 6.20, "Gemini 2.0 Flash": 5.87, "Qwen2.5-VL-7B": 6.98,
                          "Florence-2-L": 7.51}
PAPER_VQA_32SHOT = {"vqav2": 63.60, "okvqa": 60.25}
TINY_CAVEAT = ("tiny preset: every model in this run (captioner, diffusion decoder, Inception, VQA LLM) is "
               "randomly initialised and trained for a few steps on a handful of images. The FID and VQA numbers "
               "below exercise the real code paths but MEAN NOTHING and compare with no published number.")
PAPER_MINI_CAVEAT = ("paper_mini preset: the paper's code paths, settings and file formats, but every model in this "
                     "run (Florence-2, SD 2.1 base, Qwen2.5, CLIP ViT-L/14 and the aesthetic predictor, the FID "
                     "Inception, the VQA LLM) is a miniature, randomly initialised copy, trained for a few steps on a "
                     "few dozen photos and evaluated on a few. The losses, aesthetic scores, captions, FID and VQA "
                     "numbers below MEAN NOTHING and compare with no published number.")
CAVEATS = {"tiny": TINY_CAVEAT, "paper_mini": PAPER_MINI_CAVEAT}
FUNNEL = (  # (step, metric, stage label)
    ("prepare_metadata", "rows_read", "LAION metadata rows read"),
    ("prepare_metadata", "rows_kept", "passed the metadata filter"),
    ("download", "images_ok", "downloaded"),
    ("aesthetic_filter", "images_scored", "decodable and scored"),
    ("aesthetic_filter", "images_kept", "kept by the aesthetic filter"),
    ("ingest_captions", "captions_ok", "with an accepted caption"),
)
TRAINING_STEPS = ("train_stage1", "train_stage2")
_VQA_METRIC = re.compile(r"^vqa_accuracy_(?P<bench>[a-z0-9_]+?)_(?P<shots>\d+)shot$")


@dataclass
class ReportConfig:
    title: str = "VLV pipeline report"
    sample_captions: int = 8  # rows of the sample-caption table
    curve_metrics: list[str] = field(default_factory=lambda: ["loss"])  # plotted by step for each training step

    def __post_init__(self) -> None:
        if self.sample_captions < 0:
            raise ValueError(f"report.sample_captions must be >= 0, got {self.sample_captions}")


class ReportStep(Step[ReportConfig]):
    name = "report"
    upstream = ("prepare_metadata", "download", "aesthetic_filter", "ingest_captions", "train_stage1",
                "train_stage2", "caption_eval", "eval_fid", "eval_vqa", "eval_arena")
    code_version = "1"
    description = "One self-contained HTML report: results vs paper, data funnel, curves, grids, captions"

    def resources(self, config: ReportConfig) -> Resources:
        return Resources(num_cpus=0.5)

    def run(self, ctx: StepContext[ReportConfig]) -> StepResult:
        cfg = ctx.config
        tiny = ctx.random_models or _not_comparable(ctx.inputs)
        sections = [f"<h1>{esc(cfg.title)}</h1>",
                    f'<p class="muted">preset <b>{esc(ctx.preset)}</b> · report key {esc(ctx.key)} · built '
                    f'{esc(dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))}</p>']
        if tiny:
            caveat = CAVEATS.get(ctx.preset, TINY_CAVEAT)
            sections.append(f'<div class="caveat"><strong>Caveat — {esc(caveat)}</strong></div>')
        sections.append(results_section(ctx.inputs, tiny))
        sections.append(arena_section(ctx.inputs))
        sections.append(funnel_section(ctx.inputs))
        curves, curve_count = curves_section(ctx.inputs, ctx.tracking_uri, cfg.curve_metrics, ctx.log)
        sections.append(curves)
        sections.append(grids_section(ctx.inputs))
        sections.append(captions_section(ctx.inputs, cfg.sample_captions))
        sections.append(provenance_section(ctx.inputs))
        text = page(cfg.title, sections)
        (ctx.output_dir / "report.html").write_text(text, encoding="utf-8")
        ctx.log.info("report.html: %.1f KB, %d training curves%s", len(text) / 1e3, curve_count,
                     " (random-model caveat shown)" if tiny else "")
        return StepResult(metrics={"report_kb": len(text) / 1e3, "report_curves": float(curve_count)},
                          artifacts=["report.html"])


def _metrics(inputs: dict[str, StepOutput], step: str) -> dict[str, float]:
    return dict(inputs[step].manifest.metrics) if step in inputs else {}


def _not_comparable(inputs: dict[str, StepOutput]) -> bool:
    fid = _metrics(inputs, "eval_fid")
    return "fid_comparable" in fid and fid["fid_comparable"] == 0


def results_section(inputs: dict[str, StepOutput], tiny: bool) -> str:
    fid, vqa = _metrics(inputs, "eval_fid"), _metrics(inputs, "eval_vqa")
    others = list(PAPER_CAPTION_FID_CFG2)
    header = ["metric", "this run" + (" (not comparable)" if tiny else "")] + others
    rows: list[list[Any]] = [["caption FID, CFG 2 (lower is better)", fid.get("fid_cfg2")]
                             + [PAPER_CAPTION_FID_CFG2[name] for name in others]]
    for name, value in sorted(fid.items()):
        if name.startswith("fid_cfg") and name != "fid_cfg2":
            rows.append([f"caption FID, CFG {name.removeprefix('fid_cfg')}", value] + [None] * len(others))
    if "fid_recon" in fid:
        rows.append(["reconstruction FID (stage 1)", fid["fid_recon"]] + [None] * len(others))
    for name, value in sorted(fid.items()):
        if name.startswith("fid_recon_cfg"):
            rows.append([f"reconstruction FID, CFG {name.removeprefix('fid_recon_cfg')}", value]
                        + [None] * len(others))
    for bench, paper in PAPER_VQA_32SHOT.items():
        label = {"vqav2": "VQAv2", "okvqa": "OK-VQA"}[bench]
        rows.append([f"{label} accuracy %, 32-shot", vqa.get(f"vqa_accuracy_{bench}_32shot"), paper]
                    + [None] * (len(others) - 1))
    for name, value in sorted(vqa.items()):
        match = _VQA_METRIC.match(name)
        if match and not (match["bench"] in PAPER_VQA_32SHOT and match["shots"] == "32"):
            rows.append([f"{match['bench']} accuracy %, {match['shots']}-shot", value] + [None] * len(others))
    settings = _settings_note(inputs)
    return ("<h2>Results beside the paper</h2>" + table(header, rows)
            + '<p class="muted">Paper: caption FID with SD 3.5 Medium, 40 steps, on COCO 2014 val (30K); '
              "VQA with 32-shot prompts. — = not reported there or not run here. " + esc(settings) + "</p>")


def arena_section(inputs: dict[str, StepOutput]) -> str:
    """Paper Table 2 as this run measured it: eval_arena's scores table and chart (nothing if it did not run)."""
    if "eval_arena" not in inputs or not inputs["eval_arena"].has("arena_scores.csv"):
        return ""
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(inputs["eval_arena"].read_text("arena_scores.csv"))))
    cells = [[r["captioner"], int(r["scored"]), int(r["pairs"]),
              float(r["mean_score"]) if r["mean_score"] else None,
              f"{float(r['ci95_low']):.2f} - {float(r['ci95_high']):.2f}" if r["mean_score"] else None] for r in rows]
    note = "" if all(r["comparable"] == "true" for r in rows) else \
        '<p class="muted">Not comparable with the paper: the tiny preset generates the judge\'s scores.</p>'
    chart = _png_of(inputs, "eval_arena", "arena_scores.png")
    return ("<h2>Caption arena (judge scores 0-6)</h2>"
            + table(["captioner", "scored", "pairs", "mean score", "bootstrap 95% interval"], cells) + note
            + (png_img(chart, "caption arena scores") if chart else ""))


def _settings_note(inputs: dict[str, StepOutput]) -> str:
    notes = []
    if "eval_fid" in inputs:
        c, m = inputs["eval_fid"].manifest.config, inputs["eval_fid"].manifest.metrics
        notes.append(f"This run: caption FID with {c.get('t2i_model')} ({c.get('t2i_num_steps')} steps) on "
                     f"{int(m.get('fid_images', 0))} images.")
        if "fid_recon" in m and "recon_scheduler" in c:
            notes.append(f"Reconstructions sampled with {c['recon_scheduler'].upper()} ({c.get('recon_num_steps')} "
                         f"steps), CFG {c.get('recon_cfg_scales')}, headline at CFG {c.get('headline_cfg'):g}.")
    if "eval_vqa" in inputs:
        c = inputs["eval_vqa"].manifest.config
        notes.append(f"VQA with the {c.get('llm')} LLM, shots {c.get('shots')}, "
                     f"{int(inputs['eval_vqa'].manifest.metrics.get('vqa_questions', 0))} questions"
                     + (f", {c['answer_processing']} answer processing." if "answer_processing" in c else "."))
    return " ".join(notes)


def funnel_section(inputs: dict[str, StepOutput]) -> str:
    stages = [(label, _metrics(inputs, step).get(metric)) for step, metric, label in FUNNEL]
    present = [(label, value) for label, value in stages if value is not None]
    first = present[0][1] if present else None
    rows = [[label, int(value) if value is not None else None,
             f"{100 * value / first:.1f}%" if value is not None and first else None] for label, value in stages]
    chart = png_img(bar_chart_png([s[0] for s in present], [float(s[1]) for s in present],
                                  title="data funnel"), "data funnel") if present else ""
    return "<h2>Data funnel</h2>" + table(["stage", "count", "of metadata rows"], rows) + chart


def curves_section(inputs: dict[str, StepOutput], tracking_uri: str | None, metric_names: list[str],
                   log: Any) -> tuple[str, int]:
    parts, count = ["<h2>Training curves</h2>"], 0
    for step in TRAINING_STEPS:
        if step not in inputs:
            continue
        run_id = inputs[step].manifest.mlflow_run_id
        if not tracking_uri or not run_id:
            parts.append(f'<p class="muted">{esc(step)}: no MLflow run recorded for this output (run untracked), '
                         "so no curve.</p>")
            continue
        from vlv.tracking import metric_history

        series = {}
        for name in metric_names:
            try:
                points = metric_history(tracking_uri, run_id, name)
            except Exception as exc:  # noqa: BLE001 - a report without one curve beats no report
                log.warning("cannot read %s of %s run %s: %s", name, step, run_id, exc)
                points = []
            if points:
                series[name] = points
        if not series:
            parts.append(f'<p class="muted">{esc(step)}: MLflow run {esc(run_id)} has no '
                         f"{esc(', '.join(metric_names))} history.</p>")
            continue
        final = {name: points[-1][1] for name, points in series.items()}
        parts.append(png_img(line_plot_png(series, title=f"{step}: " + ", ".join(f"{n} (last {v:.4g})"
                                                                                 for n, v in final.items()),
                                           xlabel="optimizer step", ylabel="value"), f"{step} training curve"))
        count += 1
    return "".join(parts), count


def _png_of(inputs: dict[str, StepOutput], step: str, name: str) -> bytes | None:
    if step not in inputs or not inputs[step].has(name):
        return None
    with inputs[step].open(name) as handle:
        return handle.read()


def grids_section(inputs: dict[str, StepOutput]) -> str:
    parts = ["<h2>Reconstructions and generated images</h2>"]
    for step, name, caption in (
            ("eval_fid", "recon_grid.png", "Stage-1 reconstructions of evaluation images (eval_fid)"),
            ("train_stage1", "reconstruction_grid.png", "Stage-1 reconstructions of training images (end of "
                                                        "train_stage1)"),
            ("eval_fid", "caption_grid.png", "Caption FID: images generated from the captions, per CFG")):
        png = _png_of(inputs, step, name)
        if png is not None:
            parts.append(f"<h3>{esc(caption)}</h3>" + png_img(png, caption))
    if len(parts) == 1:
        parts.append('<p class="muted">No grids: eval_fid and train_stage1 published none.</p>')
    return "".join(parts)


def captions_section(inputs: dict[str, StepOutput], count: int) -> str:
    if "caption_eval" not in inputs or count == 0:
        return ""
    import pyarrow.parquet as pq

    from vlv.eval.eval_sets import read_eval_sets
    from vlv.eval.report_html import array_png
    from vlv.models.image_files import image_as_array

    folder = inputs["caption_eval"].local_folder()  # fetched once from an object store (small files)
    sets = read_eval_sets(folder)
    rows = []
    for row in pq.read_table(folder / "captions.parquet").slice(0, count).to_pylist():
        path = safe_child(sets.images_dir, row["file_name"], "COCO file_name")
        thumb = Cell(raw=png_img(array_png(image_as_array(str(path), 96)), row["file_name"], "thumb")) \
            if path.is_file() else Cell("(image missing)")
        rows.append([thumb, row["caption"] or "(empty)", row["references"][0] if row["references"] else ""])
    return ("<h2>Sample captions</h2>" + table(["image", "generated caption", "a reference caption"], rows))


def provenance_section(inputs: dict[str, StepOutput]) -> str:
    rows = [[name, out.key, f"{out.manifest.duration_s:.1f}", out.manifest.mlflow_run_id or "", out.uri]
            for name, out in inputs.items()]
    return ("<h2>Step outputs used</h2>"
            + table(["step", "key", "seconds", "MLflow run", "output"], rows))
