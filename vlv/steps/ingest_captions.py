"""Step `ingest_captions`: Gemini/Vertex batch output or plain caption files -> caption table + quarantine.

Reads the kept images of `aesthetic_filter` (kept.parquet), validates every caption row against them
(`vlv.data.caption_ingest`) and publishes `captions.parquet` (key, caption, caption_chars, finish_reason,
prompt_tokens, output_tokens, shard, url, score) and `quarantine.parquet` (source, line_number, key, reason,
detail), plus a caption-length histogram and a per-reason count table for MLflow.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from vlv.data.caption_formats import QUARANTINE_REASONS
from vlv.data.caption_ingest import IngestOptions, IngestStats, expand_sources, ingest_captions
from vlv.data.caption_keys import KeptKeys
from vlv.data.caption_synthetic import write_tiny_gemini_output
from vlv.engine.step import OutputFile, Resources, Step, StepContext, StepOutput, StepResult
from vlv.steps.aesthetic_filter import KEPT

KEPT_COLUMNS = ("key", "shard", "url", "caption", "score")
TINY_FILE = "tiny_gemini_output.jsonl"
CAPTIONS_SCHEMA = pa.schema([("key", pa.string()), ("caption", pa.string()), ("caption_chars", pa.int32()),
                             ("shard", pa.string())])  # the columns stage 2 reads (more ride along)
CAPTIONS = OutputFile("captions.parquet", "accepted captions joined to the kept images (key, caption, "
                      "caption_chars, finish_reason, prompt_tokens, output_tokens, shard, url, score)", CAPTIONS_SCHEMA)
QUARANTINE = OutputFile("quarantine.parquet", "rejected caption rows: source, line_number, key, reason, detail")


@dataclass
class IngestCaptionsConfig:
    # Path, glob, folder or fsspec URI of caption files (comma-separate several). Empty with generate_tiny=true:
    # the step writes a Gemini-format file for its kept images (with faulty lines) and ingests that.
    source: str = ""
    generate_tiny: bool = False
    format: Literal["auto", "gemini_batch", "vertex_batch", "jsonl", "csv", "parquet"] = "auto"
    key_field: str = "key"  # plain JSONL/CSV/parquet: the column holding the image key
    caption_field: str = "caption"  # plain JSONL/CSV/parquet: the column holding the caption
    max_line_bytes: int = 8 << 20  # longer lines are quarantined without being held in memory
    chunk_bytes: int = 16 << 20  # streaming read size
    parse_bytes: int = 4 << 20  # JSONL is parsed in ranges of about this size, one per thread
    num_threads: int = 2  # parser threads (the step asks Ray for this many CPUs)
    compression: Literal["snappy", "zstd", "lz4", "none"] = "snappy"  # of captions.parquet
    seed: int = 0

    def __post_init__(self) -> None:
        if self.generate_tiny and self.source.strip():
            raise ValueError("ingest_captions.source is ignored while ingest_captions.generate_tiny=true (the tiny "
                             "preset writes its own caption file); to ingest your files add --set "
                             "ingest_captions.generate_tiny=false")
        if min(self.max_line_bytes, self.chunk_bytes, self.parse_bytes) < 1024:
            raise ValueError("ingest_captions.max_line_bytes, chunk_bytes and parse_bytes must be >= 1024")
        if self.num_threads < 1:
            raise ValueError(f"ingest_captions.num_threads must be >= 1, got {self.num_threads}")
        if not self.key_field or not self.caption_field:
            raise ValueError("ingest_captions.key_field and ingest_captions.caption_field must not be empty")


class IngestCaptionsStep(Step[IngestCaptionsConfig]):
    name = "ingest_captions"
    upstream = ("aesthetic_filter",)
    code_version = "1"
    description = "Caption files -> caption table joined to kept images, plus quarantine"
    outputs = (CAPTIONS, QUARANTINE, OutputFile("caption_length_histogram.png", "caption lengths"),
               OutputFile("quarantine_summary.csv", "quarantined rows per reason"))

    def resources(self, config: IngestCaptionsConfig) -> Resources:
        return Resources(num_cpus=float(config.num_threads))

    def preflight(self, config: IngestCaptionsConfig) -> None:
        if config.generate_tiny:
            return
        if not config.source.strip():
            raise ValueError(
                "ingest_captions.source is empty: set it to your caption files (Gemini/Vertex batch output or "
                "JSONL/CSV/parquet; a path, glob, folder or URI), e.g. --set ingest_captions.source="
                "'/data/gemini/*.jsonl', or set ingest_captions.generate_tiny=true for generated captions")

        expand_sources(config.source)  # raises a ValueError naming the source when it matches no file

    def run(self, ctx: StepContext[IngestCaptionsConfig]) -> StepResult:
        cfg = ctx.config
        kept_table = read_kept(ctx.input("aesthetic_filter"))
        ctx.log.debug("%d kept images from aesthetic_filter", kept_table.num_rows)
        names: dict[str, str] = {}
        if cfg.generate_tiny:
            tiny = write_tiny_gemini_output(str(ctx.output_dir / TINY_FILE), kept_table.column("key").to_pylist(),
                                            kept_table.column("caption").to_pylist(), seed=cfg.seed)
            ctx.log.info("wrote %s: %d good lines and faulty ones %s", TINY_FILE, tiny.good_lines, tiny.faulty)
            sources = [tiny.path]
            names[tiny.path] = TINY_FILE
        else:
            sources = expand_sources(cfg.source)
        kept = KeptKeys(kept_table.column("key"), join=kept_table.select(["shard", "url", "score"]))
        if kept.duplicate_kept_keys:
            ctx.log.warning("kept.parquet repeats %d keys; captions join to the first row of each",
                            kept.duplicate_kept_keys)

        def progress(stats: IngestStats, source: str) -> None:
            ctx.log.info("%s: %s rows read, %s captions ok, %s quarantined, %s rows/s", names.get(source, source),
                         f"{stats.rows_read:,}", f"{stats.captions_ok:,}", f"{stats.captions_quarantined:,}",
                         f"{stats.rows_per_s:,.0f}")

        options = IngestOptions(format=cfg.format, key_field=cfg.key_field, caption_field=cfg.caption_field,
                                max_line_bytes=cfg.max_line_bytes, chunk_bytes=cfg.chunk_bytes,
                                parse_bytes=cfg.parse_bytes, num_threads=cfg.num_threads, compression=cfg.compression)
        ctx.log.debug("ingesting %d caption file(s): %s", len(sources), ", ".join(names.get(s, s) for s in sources[:5]))
        stats = ingest_captions(sources, str(ctx.output_dir / "captions.parquet"),
                                str(ctx.output_dir / "quarantine.parquet"), kept=kept, options=options,
                                progress=progress, source_names=names)
        progress(stats, sources[-1])
        if stats.captions_ok == 0:
            top = ", ".join(f"{r}={n}" for r, n in stats.quarantined.most_common(3)) or "no rows at all"
            top_reason = next(iter(stats.quarantined.most_common(1)), ("", 0))[0]
            encoding = " The files are not UTF-8: convert them (e.g. iconv -f cp1252 -t UTF-8)." \
                if top_reason == "bad_encoding" else ""
            raise ValueError(f"no caption passed validation ({stats.rows_read} rows read; {top}). Check "
                             "ingest_captions.source, format, key_field and caption_field, and that the captions are "
                             f"for this run's kept images.{encoding}")
        write_summary(ctx.output_dir / "quarantine_summary.csv", stats.quarantined)
        plot_caption_lengths(ctx.output_dir / "captions.parquet", ctx.output_dir / "caption_length_histogram.png")
        metrics = {"captions_ok": stats.captions_ok, "captions_quarantined": stats.captions_quarantined,
                   "rows_read": stats.rows_read, "rows_per_s": round(stats.rows_per_s, 1),
                   "kept_images": kept.size, "kept_images_captioned": kept.captioned}

        metrics.update({f"quarantined_{reason}": stats.quarantined.get(reason, 0) for reason in QUARANTINE_REASONS})
        return StepResult(metrics=metrics, artifacts=["caption_length_histogram.png", "quarantine_summary.csv"])


def read_kept(upstream: StepOutput) -> pa.Table:
    """kept.parquet of aesthetic_filter (read through the store), with the columns this step relies on."""
    table = upstream.read_table(KEPT)
    missing = [c for c in KEPT_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{upstream.path(KEPT)} lacks column(s) {', '.join(missing)}; rerun aesthetic_filter "
                         "(vlv run aesthetic_filter --force aesthetic_filter)")
    table = table.select(list(KEPT_COLUMNS))
    return table.set_column(4, "score", table.column("score").cast(pa.float32()))


def write_summary(path: Path, counts) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["reason", "count"])
        for reason in QUARANTINE_REASONS:
            writer.writerow([reason, counts.get(reason, 0)])


def plot_caption_lengths(captions_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lengths = pq.read_table(captions_path, columns=["caption_chars"]).column("caption_chars").to_numpy()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.hist(lengths, bins=min(50, max(5, len(np.unique(lengths)))), color="#4477aa")
    ax.set_xlabel("caption length (characters)")
    ax.set_ylabel("captions")
    ax.set_title(f"{len(lengths):,} captions: mean {lengths.mean():.0f}, median {np.median(lengths):.0f} chars")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
