"""The paper's Tables 1 to 5 with a run's (or each sweep point's) matching numbers beside the paper's rows.

Each table lists the paper's rows (`vlv.eval.paper_numbers`: values with their source marks, or "not available
offline") and, right after the paper row they match, one row per run with this run's metric in the same columns,
or "not run" where the step or the setting did not run. A run row matches a paper row by captioner name (Tables
1-3: VLV, and `other_captioners` files named like the paper's captioners, e.g. `gpt4o`) or by the run's setting
(Tables 4-5: query count, trainable set, caption decoder); a run whose setting matches no paper row (e.g. its
training-image count) comes after the group. Built from plain metrics and settings, so a report of one run and a
sweep's comparison of many render the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from vlv.eval import paper_numbers as paper
from vlv.eval.paper_numbers import CFG_SCALES, PaperRow

NOT_OFFLINE = "not available offline"
NOT_RUN = "not run"
PAPER = "paper"
Value = float | str | None


@dataclass(frozen=True)
class RunNumbers:
    """What the tables need of one run: its metrics (every evaluation step's, merged) and settings."""

    label: str  # "this run", or a sweep point's label
    metrics: Mapping[str, float]
    settings: Mapping[str, Any]  # "train_stage1.num_queries", "train_stage2.trainable", "train_stage2.llm_arch",
    #                              "training_images", "eval_fid.t2i_model", ... (absent: that step did not run)
    captioners: Sequence[str] = ()  # the other captioners this run scored (caption FID and arena), besides VLV


@dataclass
class PaperTable:
    title: str
    header: list[str]
    rows: list[list[Value]] = field(default_factory=list)  # [label, numbers from, cell...]
    notes: list[str] = field(default_factory=list)

    def row(self, label: str, source: str) -> list[Value]:
        return next(r for r in self.rows if r[0] == label and r[1] == source)


def _paper_cells(row: PaperRow) -> list[Value]:
    return [value.text() or NOT_OFFLINE for value in row.values]


def _metric(run: RunNumbers, name: str) -> Value:
    value = run.metrics.get(name)
    return NOT_RUN if value is None else float(value)


def _captioner_table(table: PaperTable, rows: Sequence[PaperRow], runs: Sequence[RunNumbers],
                     cells: Callable[[RunNumbers, str], list[Value]], run_names: Callable[[RunNumbers], list[str]],
                     names: Mapping[str, str]) -> PaperTable:
    """Paper rows by captioner, each followed by every run's row for that captioner; captioners only runs have
    last."""
    for row in rows:
        table.rows.append([row.label, PAPER, *_paper_cells(row)])
        for run in runs:
            table.rows.append([row.label, run.label, *cells(run, row.match)])
    known = {row.match for row in rows}
    for run in runs:
        for name in run_names(run):
            if name not in known:
                table.rows.append([names.get(name, name), run.label, *cells(run, name)])
    return table


def table1(runs: Sequence[RunNumbers]) -> PaperTable:
    """Caption FID per captioner and CFG: VLV's `fid_cfg<k>`, another captioner's `fid_caption_<name>_cfg<k>`."""
    def cells(run: RunNumbers, captioner: str) -> list[Value]:
        prefix = "fid_cfg" if captioner == "vlv" else f"fid_caption_{captioner}_cfg"
        return [_metric(run, f"{prefix}{scale:g}") for scale in CFG_SCALES]

    table = PaperTable("Table 1. Caption FID: captions -> text-to-image model -> FID against the original images "
                       "(lower is better)", ["captioner", "numbers from", *(f"CFG {s:g}" for s in CFG_SCALES)])
    table.notes = [paper.TABLE1_NOTE, "Paper: SD 3.5 Medium, 40 steps, 30K COCO 2014 val images. A run's other "
                   "captioners appear beside the paper's row of the same name (eval_fid.other_captioners[].name: "
                   + ", ".join(f"{r.match} = {r.label}" for r in paper.TABLE1 if r.match != "vlv") + ")."]
    table.notes += [_fid_setting(run) for run in runs if "eval_fid.t2i_model" in run.settings]
    return _captioner_table(table, paper.TABLE1, runs, cells, lambda run: list(run.captioners),
                            {"coco_reference": "COCO reference captions"})


def _fid_setting(run: RunNumbers) -> str:
    s = run.settings
    return (f"{run.label}: {s.get('eval_fid.t2i_model')}, {s.get('eval_fid.t2i_num_steps')} steps, "
            f"{s.get('eval_fid.t2i_image_size')} px, {s.get('eval_fid.t2i_dtype')}, "
            f"{int(run.metrics.get('fid_images', 0))} images.")


def table2(runs: Sequence[RunNumbers]) -> PaperTable:
    """Caption arena: `arena_score` (VLV) and `arena_score_<name>`, with the bootstrap 95% interval."""
    def cells(run: RunNumbers, captioner: str) -> list[Value]:
        name = "arena_score" if captioner == "vlv" else f"arena_score_{captioner}"
        low, high = run.metrics.get(f"{name}_ci95_low"), run.metrics.get(f"{name}_ci95_high")
        return [_metric(run, name), NOT_RUN if low is None or high is None else f"{low:.2f} - {high:.2f}"]

    table = PaperTable("Table 2. Caption arena: mean judge score 0-6 (higher is better)",
                       ["captioner", "numbers from", "mean score", "95% interval"])
    table.notes = [paper.TABLE2_NOTE, "Paper: Gemini 2.0 Flash judges 200 COCO images."]
    return _captioner_table(table, paper.TABLE2, runs, cells,
                            lambda run: [n.removeprefix("arena_score_") for n in run.metrics
                                         if n.startswith("arena_score_") and not n.endswith(("_low", "_high"))], {})


def table3(runs: Sequence[RunNumbers]) -> PaperTable:
    """VQA accuracy % from VLV's captions: `vqa_accuracy_<bench>_<k>shot` (other captioners are not answered)."""
    def cells(run: RunNumbers, captioner: str) -> list[Value]:
        if captioner != "vlv":
            return [NOT_RUN] * len(paper.VQA_COLUMNS)
        return [_metric(run, f"vqa_accuracy_{bench}_{shots}shot") for bench, shots in paper.VQA_COLUMNS]

    names = {"vqav2": "VQAv2", "okvqa": "OK-VQA"}
    table = PaperTable("Table 3. VQA accuracy % from captions through a text-only LLM (higher is better)",
                       ["captioner", "numbers from", *(f"{names[b]} {k}-shot" for b, k in paper.VQA_COLUMNS)])
    table.notes = [paper.TABLE3_NOTE]
    table.notes += [f"{run.label}: answers by {run.settings['eval_vqa.llm']}." for run in runs
                    if "eval_vqa.llm" in run.settings]
    return _captioner_table(table, paper.TABLE3, runs, cells, lambda run: [], {})


def _setting_group(table: PaperTable, rows: Sequence[PaperRow], runs: Sequence[RunNumbers], setting: str,
                   cells: Callable[[RunNumbers], list[Value]], describe: Callable[[Any], str]) -> None:
    """Paper rows of one setting, each followed by the runs with that setting; runs matching no row come last."""
    placed = set()
    for row in rows:
        table.rows.append([row.label, PAPER, *_paper_cells(row)])
        for run in runs:
            if setting in run.settings and str(run.settings[setting]) == row.match:
                table.rows.append([row.label, run.label, *cells(run)])
                placed.add(run.label)
    for run in runs:
        if run.label not in placed:
            value = run.settings.get(setting)
            label = NOT_RUN if value is None else describe(value)
            table.rows.append([label, run.label, *(cells(run) if value is not None else
                                                   [NOT_RUN] * len(rows[0].values))])


def table4(runs: Sequence[RunNumbers]) -> PaperTable:
    """(a) learnable queries -> `fid_recon`; (b) stage-2 trainable set -> VLV's caption FID at CFG 2 (`fid_cfg2`)."""
    table = PaperTable("Table 4. Ablations: learnable queries (stage-1 reconstruction FID) and progressive "
                       "unfreezing (caption FID, CFG 2); lower is better", ["setting", "numbers from", "FID"])
    _setting_group(table, paper.TABLE4_QUERIES, runs, "train_stage1.num_queries",
                   lambda run: [_metric(run, "fid_recon")], lambda n: f"{n} queries")
    _setting_group(table, paper.TABLE4_UNFREEZING, runs, "train_stage2.trainable",
                   lambda run: [_metric(run, "fid_cfg2")], lambda t: f"trainable {t}")
    table.notes = ["†: the digest gives the query ablation as a FID of reconstruction quality without its CFG; a "
                   "run's number is its reconstruction FID at the headline CFG (fid_recon)."]
    return table


def table5(runs: Sequence[RunNumbers]) -> PaperTable:
    """Scaling: training images and caption decoder, VLV's caption FID per CFG (`fid_cfg<k>`)."""
    def cells(run: RunNumbers) -> list[Value]:
        return [_metric(run, f"fid_cfg{scale:g}") for scale in CFG_SCALES]

    table = PaperTable("Table 5. Scaling the training images and the caption decoder (FID, lower is better)",
                       ["setting", "numbers from", *(f"CFG {s:g}" for s in CFG_SCALES)])
    _setting_group(table, paper.TABLE5_IMAGES, runs, "training_images", cells, lambda n: f"{int(n):,} images")
    _setting_group(table, paper.TABLE5_DECODER, runs, "train_stage2.llm_arch", cells, str)
    table.notes = ["The table's metric is not available offline; a run's number is its caption FID per CFG (a "
                   "larger decoder can change only the captions). A run's training images: those kept by "
                   "aesthetic_filter."]
    return table


def paper_tables(runs: Sequence[RunNumbers]) -> list[PaperTable]:
    return [table1(runs), table2(runs), table3(runs), table4(runs), table5(runs)]


def sources_note() -> str:
    return " ".join(f"{source.mark} {source.text}." for source in paper.SOURCES)
