"""Step `eval_arena`: the caption arena of paper Table 2, a judge model scoring captions 0-6 against the image.

The judge (Gemini 2.0 Flash in the paper) runs as a Gemini Batch API job outside the pipeline, like the
training captions: `vlv arena request --output requests.jsonl` writes its requests (`vlv.eval.arena`), the
batch job writes a responses file, and this step ingests it (`eval_arena.judge_output`). The pairs judged are
`num_images` images of caption_eval's caption set (paper: 200 COCO images) times the captioners: VLV (caption_eval's
captions) and every `other_captioners` file (paper: GPT-4o, Qwen2.5-VL-7B). The replies go through caption
ingestion's streaming validation and quarantine (`vlv.data.caption_ingest`), plus one rule of the arena's
own: a reply without an integer score 0-6 is quarantined as `bad_score` with the reason.

Outputs: `arena_pairs.parquet` (every pair judged), `arena_judgements.parquet` (the accepted scores),
`quarantine.parquet`, `arena_scores.csv` (per captioner: pairs, scores, mean, seeded bootstrap 95% interval) and
`arena_scores.png`. Metrics `arena_score` (VLV's mean) and `arena_score_<captioner>`, each with `_ci95_low` /
`_ci95_high`, and the ingestion counts. With `generate_tiny` (tiny preset) the step writes the requests, a
`reference` captioner and a judge output file with faulty lines itself (`vlv.eval.arena_tiny`), so it runs
offline; those scores are random and mean nothing.
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlv.data.caption_formats import QUARANTINE_REASONS
from vlv.data.caption_ingest import IngestOptions, expand_sources, ingest_captions
from vlv.data.caption_keys import KeptKeys
from vlv.engine.step import OutputFile, Resources, Step, StepContext, StepOutput, StepResult
from vlv.engine.storage import checked_on_this_machine
from vlv.eval.arena import (
    BAD_SCORE,
    CAPTIONER_NAME,
    VLV,
    ArenaPair,
    bootstrap_interval,
    build_pairs,
    captions_for,
    judge_score,
    load_rubric,
    read_captioner_file,
    score_rejects,
    write_judge_requests,
)
from vlv.eval.arena_tiny import (
    TINY_JUDGE_FILE,
    TINY_REFERENCE_FILE,
    TINY_REFERENCE_NAME,
    write_reference_captions,
    write_tiny_judge_output,
)
from vlv.eval.eval_sets import EVAL_SETS_FILE, EvalSets, read_eval_sets
from vlv.steps.caption_eval import CAPTIONS

PAIRS = OutputFile("arena_pairs.parquet", "every (captioner, image, caption) sent to the judge",
                   pa.schema([("key", pa.string()), ("captioner", pa.string()), ("image_id", pa.int64()),
                              ("file_name", pa.string()), ("caption", pa.string())]))
JUDGEMENTS = OutputFile("arena_judgements.parquet", "the judge's accepted scores",
                        pa.schema([("key", pa.string()), ("captioner", pa.string()), ("image_id", pa.int64()),
                                   ("score", pa.int32()), ("reply", pa.string())]))
SCORES_CSV = OutputFile("arena_scores.csv", "mean judge score per captioner with a bootstrap 95% interval")
CHART = OutputFile("arena_scores.png", "the mean scores as bars with their intervals")
REQUESTS_FILE = "arena_requests.jsonl"
TINY_WARNING = "tiny preset: the judge's scores are generated at random; these arena scores mean nothing"
REQUEST_COMMAND = "vlv arena request --preset paper --output arena_requests.jsonl"


@dataclass
class ArenaCaptionerConfig:
    """Another captioner's captions: a plain JSONL or CSV file with `image_id` and/or `file_name`, and `caption`."""

    name: str = ""  # in metric names (arena_score_<name>): lowercase letters, digits, underscores
    path: str = ""

    def __post_init__(self) -> None:
        if not CAPTIONER_NAME.match(self.name) or self.name == VLV:
            raise ValueError(f"eval_arena.other_captioners[].name must be lowercase letters, digits and '_' and not "
                             f"'{VLV}' (caption_eval's captions), got {self.name!r}")
        if not self.path:
            raise ValueError(f"eval_arena.other_captioners[{self.name}].path is empty: give its captions file")


@dataclass
class EvalArenaConfig:
    num_images: int = 200  # of caption_eval's caption set (paper: 200 COCO images)
    seed: int = 0  # which images (and the bootstrap)
    other_captioners: list[ArenaCaptionerConfig] = field(default_factory=list)  # paper: GPT-4o, Qwen2.5-VL-7B
    # The judge's Gemini Batch API output (or Vertex AI batch output): a path, glob, folder or URI, comma-separated.
    judge_output: str = ""
    # tiny: write the requests, a "reference" captioner and a judge output file with faulty lines here, offline.
    generate_tiny: bool = False
    rubric_file: str = ""  # the judge's rubric text ({caption} marks the caption's place); "" = the project's own
    json_reply: bool = True  # ask Gemini for {"justification", "score"} JSON (responseSchema)
    bootstrap_resamples: int = 10_000
    max_line_bytes: int = 8 << 20  # longer judge lines are quarantined unread

    def __post_init__(self) -> None:
        if self.generate_tiny and self.judge_output.strip():
            raise ValueError("eval_arena.judge_output is ignored while eval_arena.generate_tiny=true (the tiny preset "
                             "writes its own judge file); to ingest yours add --set eval_arena.generate_tiny=false")
        if self.num_images < 1:
            raise ValueError(f"eval_arena.num_images must be >= 1, got {self.num_images}")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"eval_arena.bootstrap_resamples must be >= 100, got {self.bootstrap_resamples}")
        if self.max_line_bytes < 1024:
            raise ValueError("eval_arena.max_line_bytes must be >= 1024")
        names = [c.name for c in self.other_captioners]
        if len(set(names)) != len(names):
            raise ValueError(f"eval_arena.other_captioners names must be distinct, got {names}")


class EvalArenaStep(Step[EvalArenaConfig]):
    name = "eval_arena"
    upstream = ("caption_eval",)
    code_version = "1"
    description = "Caption arena: a judge model's 0-6 scores of VLV's and other captioners' captions (Table 2)"
    outputs = (PAIRS, JUDGEMENTS, SCORES_CSV, CHART,
               OutputFile("quarantine.parquet", "judge lines rejected: source, line_number, key, reason, detail"),
               OutputFile(REQUESTS_FILE, "the judge requests (tiny preset only)", required=False))

    def resources(self, config: EvalArenaConfig) -> Resources:
        return Resources(num_cpus=1)

    def weight_paths(self, config: EvalArenaConfig) -> dict[str, str]:
        paths = {f"eval_arena.other_captioners[{c.name}].path": c.path for c in config.other_captioners}
        return {**paths, "eval_arena.rubric_file": config.rubric_file}  # read by this step's task, on its node

    def waiting_for(self, config: EvalArenaConfig) -> str:
        if config.generate_tiny or config.judge_output.strip():
            return ""
        return (f"the judge's output (eval_arena.judge_output): write the requests with `{REQUEST_COMMAND}`, run "
                "them as a Gemini Batch API job, then rerun with --set eval_arena.judge_output=<responses.jsonl>")

    def preflight(self, config: EvalArenaConfig) -> None:
        if not config.generate_tiny and not config.judge_output.strip():
            raise ValueError(
                f"eval_arena.judge_output is empty: write the judge requests with `{REQUEST_COMMAND}` (same --config/"
                "--set/--store; caption_eval must have run), run them as a Gemini Batch API job (gemini-2.0-flash), "
                "then --set eval_arena.judge_output=<responses.jsonl>; or set eval_arena.generate_tiny=true")
        if config.judge_output and checked_on_this_machine(config.judge_output.split(",")[0].strip()):
            try:
                expand_sources(config.judge_output)
            except ValueError as err:
                raise ValueError(str(err).replace("ingest_captions.source", "eval_arena.judge_output")) from None
        for captioner in config.other_captioners:
            if checked_on_this_machine(captioner.path) and not Path(captioner.path).is_file():
                raise ValueError(f"eval_arena.other_captioners[{captioner.name}].path={captioner.path!r} does not "
                                 "exist")
        if checked_on_this_machine(config.rubric_file):
            load_rubric(config.rubric_file)

    def run(self, ctx: StepContext[EvalArenaConfig]) -> StepResult:
        cfg = ctx.config
        upstream = ctx.input("caption_eval")
        pairs = arena_pairs(upstream, cfg, ctx.output_dir)
        write_pairs(ctx.output_dir / str(PAIRS), pairs)
        names: dict[str, str] = {}
        if cfg.generate_tiny:
            ctx.log.warning(TINY_WARNING)
            images_dir = caption_set_images_dir(upstream)
            write_judge_requests(pairs, images_dir, ctx.output_dir / REQUESTS_FILE, load_rubric(cfg.rubric_file),
                                 json_reply=cfg.json_reply)
            tiny = write_tiny_judge_output(ctx.output_dir / TINY_JUDGE_FILE, [p.key for p in pairs], cfg.seed)
            ctx.log.info("wrote %s: %d scored lines and faulty ones %s", TINY_JUDGE_FILE, len(tiny.scores),
                         tiny.faulty)
            sources, names = [tiny.path], {tiny.path: TINY_JUDGE_FILE}
        else:
            sources = expand_sources(cfg.judge_output)
        ctx.log.info("%d pairs (%d images x %s) judged in %d file(s)", len(pairs), len({p.image_id for p in pairs}),
                     ", ".join(dict.fromkeys(p.captioner for p in pairs)), len(sources))
        with tempfile.TemporaryDirectory() as scratch:
            accepted = os.path.join(scratch, "accepted.parquet")
            stats = ingest_captions(
                sources, accepted, str(ctx.output_dir / "quarantine.parquet"),
                kept=KeptKeys(pa.array([p.key for p in pairs], pa.string())),
                options=IngestOptions(format="auto", max_line_bytes=cfg.max_line_bytes, num_threads=1),
                source_names=names, content_check=score_rejects)
            replies = pq.read_table(accepted, columns=["key", "caption"]).to_pylist()
        if not replies:
            top = ", ".join(f"{r}={n}" for r, n in stats.quarantined.most_common(3)) or "no lines at all"
            raise ValueError(f"no judge reply passed validation ({stats.rows_read} lines read; {top}): check that "
                             "eval_arena.judge_output is the batch output of the requests that `vlv arena request` "
                             "wrote for this config")
        judgements = write_judgements(ctx.output_dir / str(JUDGEMENTS), pairs, replies)
        comparable = not (cfg.generate_tiny or read_is_tiny(upstream))
        rows = score_rows(pairs, judgements, resamples=cfg.bootstrap_resamples, seed=cfg.seed)
        write_scores_csv(ctx.output_dir / str(SCORES_CSV), rows, comparable=comparable)
        plot_scores(ctx.output_dir / str(CHART), rows, comparable=comparable)
        metrics: dict[str, float] = {"arena_pairs": len(pairs), "arena_judged": len(judgements),
                                     "arena_quarantined": stats.captions_quarantined}
        for row in rows:
            if row["scored"]:
                name = metric_name(row["captioner"])
                metrics.update({name: row["mean"], f"{name}_ci95_low": row["low"], f"{name}_ci95_high": row["high"]})
            ctx.log.info("arena %s: %s over %d of %d pairs", row["captioner"], _interval_text(row), row["scored"],
                         row["pairs"])
        metrics.update({f"arena_quarantined_{reason}": stats.quarantined.get(reason, 0)
                        for reason in (*QUARANTINE_REASONS, BAD_SCORE)})
        return StepResult(metrics=metrics, artifacts=[str(SCORES_CSV), str(CHART)])


# -- the pairs ----------------------------------------------------------------------------------------------

def arena_pairs(caption_eval: StepOutput, cfg: EvalArenaConfig, scratch: Path) -> list[ArenaPair]:
    """The pairs to judge for this config: the same for the step and for `vlv arena request`.

    `scratch`: where the tiny preset's reference-captioner file is written (then read back like any other).
    """
    caption_set = caption_eval.read_table(CAPTIONS, columns=["image_id", "file_name", "caption", "references"])
    caption_set = caption_set.to_pylist()
    files = [(c.name, c.path) for c in cfg.other_captioners]
    if cfg.generate_tiny:
        reference = scratch / TINY_REFERENCE_FILE
        write_reference_captions(reference, caption_set)
        files.append((TINY_REFERENCE_NAME, str(reference)))
    others = {name: captions_for(caption_set, *read_captioner_file(path, name)) for name, path in files}
    return build_pairs(caption_set, others, cfg.num_images, cfg.seed)


def caption_set_images_dir(caption_eval: StepOutput) -> str:
    """The caption set's image folder (caption_eval's own output for the tiny sets, fetched once from a store)."""
    return read_eval_sets(caption_eval.local_folder()).images_dir


def read_is_tiny(caption_eval: StepOutput) -> bool:
    return EvalSets.from_json(caption_eval.read_text(EVAL_SETS_FILE)).tiny


def write_pairs(path: Path, pairs: list[ArenaPair]) -> None:
    pq.write_table(pa.Table.from_pylist([{"key": p.key, "captioner": p.captioner, "image_id": p.image_id,
                                          "file_name": p.file_name, "caption": p.caption} for p in pairs],
                                        schema=PAIRS.schema), path)


def write_judgements(path: Path, pairs: list[ArenaPair], replies: list[dict[str, Any]]) -> dict[str, int]:
    """The accepted scores by key (every accepted reply holds one: ingestion checked it), also as a table."""
    by_key = {p.key: p for p in pairs}
    scores: dict[str, int] = {}
    rows = []
    for reply in replies:
        score, _ = judge_score(reply["caption"])
        assert score is not None, "ingestion let a reply without a score through"
        pair = by_key[reply["key"]]
        scores[pair.key] = score
        rows.append({"key": pair.key, "captioner": pair.captioner, "image_id": pair.image_id, "score": score,
                     "reply": reply["caption"]})
    pq.write_table(pa.Table.from_pylist(rows, schema=JUDGEMENTS.schema), path)
    return scores


# -- the scores ---------------------------------------------------------------------------------------------

def score_rows(pairs: list[ArenaPair], scores: dict[str, int], *, resamples: int, seed: int) -> list[dict[str, Any]]:
    """Per captioner, in pair order: pairs, scored pairs, mean and bootstrap 95% interval (NaN when none scored)."""
    rows = []
    for captioner in dict.fromkeys(p.captioner for p in pairs):
        mine = [scores[p.key] for p in pairs if p.captioner == captioner and p.key in scores]
        mean, low, high = bootstrap_interval(mine, resamples=resamples, seed=seed)
        rows.append({"captioner": captioner, "pairs": sum(p.captioner == captioner for p in pairs),
                     "scored": len(mine), "mean": mean, "low": low, "high": high})
    return rows


def write_scores_csv(path: Path, rows: list[dict[str, Any]], *, comparable: bool) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["captioner", "pairs", "scored", "mean_score", "ci95_low", "ci95_high", "comparable"])
        for row in rows:
            numbers = [f"{row[k]:.4f}" if row["scored"] else "" for k in ("mean", "low", "high")]
            writer.writerow([row["captioner"], row["pairs"], row["scored"], *numbers, str(comparable).lower()])


def plot_scores(path: Path, rows: list[dict[str, Any]], *, comparable: bool) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [r for r in rows if r["scored"]]
    figure = Figure(figsize=(1.4 * len(shown) + 2.5, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    means = [r["mean"] for r in shown]
    errors = [[r["mean"] - r["low"] for r in shown], [r["high"] - r["mean"] for r in shown]]
    axes.bar(range(len(shown)), means, yerr=errors, capsize=6, color="#4C72B0")
    axes.set_xticks(range(len(shown)), [r["captioner"] for r in shown])
    for x, r in enumerate(shown):
        axes.text(x, r["high"] + 0.08, f"{r['mean']:.2f}", ha="center", fontsize=8)
    axes.set_ylim(0, 6.6)
    axes.set_ylabel("mean judge score (0-6)")
    axes.set_title("caption arena, bootstrap 95% intervals" + ("" if comparable else "\n(tiny: random scores)"),
                   fontsize=10)
    figure.tight_layout()
    figure.savefig(path)


def metric_name(captioner: str) -> str:
    """`arena_score` for VLV, `arena_score_<name>` for the others (names are checked to suit metric names)."""
    return "arena_score" if captioner == VLV else f"arena_score_{captioner}"


def _interval_text(row: dict[str, Any]) -> str:
    return f"{row['mean']:.3f} [{row['low']:.3f}, {row['high']:.3f}]" if row["scored"] else "no score"
