"""Step `download`: img2dataset into webdataset shards, resumable, with counts by status and error reason."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from vlv.data.download_stats import DownloadCounts, DownloadProgress, read_download_counts
from vlv.data.img2dataset_runner import (
    DEFAULT_MAX_IMAGE_PIXELS,
    Img2DatasetJob,
    UrlRewrite,
    canonicalize_shards,
    run_img2dataset,
)
from vlv.data.laion import CANONICAL_COLUMNS
from vlv.data.loopback_site import canonical_urls, serve_folder
from vlv.engine.step import OutputFile, Resources, Step, StepContext, StepOutput, StepResult, WorkerPool
from vlv.engine.storage import filesystem
from vlv.paths import check_relative
from vlv.steps.prepare_metadata import METADATA, SITE_INFO

PARTS_FOLDER = "_metadata_parts"
SHARDS = OutputFile("shards/", "webdataset tars (NNNNN.tar) with per-shard parquet and NNNNN_stats.json")
DOWNLOAD_COUNTS = OutputFile("download_counts.csv", "samples by status and error reason")


@dataclass
class DownloadConfig:
    image_size: int = 384  # shorter side resized to this, then centre-cropped (docs/DESIGN.md section 2.1)
    resize_mode: Literal["center_crop", "border", "keep_ratio", "no"] = "center_crop"
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = 95
    # Images whose header declares more pixels fail with "image area too large" before being decoded
    # (decompression bombs: a few KB of PNG can declare 10^10 pixels).
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    samples_per_shard: int = 10000
    processes_count: int = 2
    thread_count: int = 16
    timeout_s: int = 10
    retries: int = 0
    # "auto": img2dataset's `ray` distributor when joined to a Ray cluster, `multiprocessing` otherwise
    # (and always for the tiny loopback site, which only this machine can reach).
    distributor: Literal["auto", "multiprocessing", "ray"] = "auto"
    # Respect X-Robots-Tag opt-outs (img2dataset's default directives); set false only with the rights to.
    respect_opt_out: bool = True
    num_cpus: float = 1.0
    progress_interval_s: float = 30.0  # seconds between progress log lines
    # img2dataset reads each input file whole: metadata longer than this is fed to it in parts of about this
    # many rows (rounded to whole shards, so shard numbering is the same as from one file).
    metadata_part_rows: int = 1_000_000

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError(f"download.image_size must be > 0, got {self.image_size}")
        if self.samples_per_shard <= 0:
            raise ValueError(f"download.samples_per_shard must be > 0, got {self.samples_per_shard}")
        if self.processes_count <= 0 or self.thread_count <= 0:
            raise ValueError("download.processes_count and download.thread_count must be > 0")
        if not 0 <= self.encode_quality <= 100:
            raise ValueError(f"download.encode_quality must be in 0..100, got {self.encode_quality}")
        if self.max_image_pixels <= 0:
            raise ValueError(f"download.max_image_pixels must be > 0, got {self.max_image_pixels}")
        if self.metadata_part_rows <= 0:
            raise ValueError(f"download.metadata_part_rows must be > 0, got {self.metadata_part_rows}")
        if self.progress_interval_s <= 0:
            raise ValueError(f"download.progress_interval_s must be > 0, got {self.progress_interval_s}")


class DownloadStep(Step[DownloadConfig]):
    name = "download"
    upstream = ("prepare_metadata",)
    code_version = "1"
    # A crashed attempt's staging folder is kept: img2dataset's incremental mode skips its finished shards.
    resumable = True
    description = "img2dataset into webdataset shards"
    system_metrics = True
    outputs = (SHARDS, DOWNLOAD_COUNTS)

    def resources(self, config: DownloadConfig) -> Resources:
        return Resources(num_cpus=config.num_cpus)

    def worker_pools(self, config: DownloadConfig) -> tuple[WorkerPool, ...]:
        """img2dataset's `processes_count` download processes (each with `thread_count` threads): child processes
        of this task, or with the `ray` distributor Ray tasks of 1 CPU each (img2dataset's own request). "auto"
        picks `ray` on a cluster; declared as processes, since the CPUs and the count are the same."""
        kind = "tasks" if config.distributor == "ray" else "processes"
        name = f"img2dataset process of {config.thread_count} threads"
        return (WorkerPool(name, kind, config.processes_count, 1.0),)

    def run(self, ctx: StepContext[DownloadConfig]) -> StepResult:
        cfg = ctx.config
        upstream = ctx.input("prepare_metadata")
        with upstream.parquet_file(METADATA) as parquet:
            total_rows, columns = parquet.metadata.num_rows, parquet.schema_arrow.names
        site = _site_info(upstream)
        distributor = cfg.distributor
        if distributor == "auto":
            distributor = "ray" if ctx.on_cluster and site is None else "multiprocessing"
        if distributor == "ray" and site is not None:
            raise ValueError("download.distributor=ray cannot reach the tiny preset's loopback photo site: it is "
                             "served on 127.0.0.1 of the node running this step only. Use download.distributor="
                             "auto or multiprocessing")
        # Shards go straight to this attempt's place in the store: a rerun (on any node) continues them.
        shards_uri = f"{ctx.output_uri}/shards"
        parts_dir = ctx.output_dir / PARTS_FOLDER
        total_shards = math.ceil(total_rows / cfg.samples_per_shard)
        ctx.log.info("download: %d URLs into %d shards of %d with the %s distributor (%d processes x %d threads)",
                     total_rows, total_shards, cfg.samples_per_shard, distributor, cfg.processes_count,
                     cfg.thread_count)
        with _serving(upstream, site, ctx) as served_urls:
            url_list = split_metadata(upstream, total_rows, cfg, parts_dir, ctx, url_rewrite=served_urls)
            job = img2dataset_job(cfg, url_list, shards_uri, distributor, columns)
            with DownloadProgress(shards_uri, total_shards, total_rows, cfg.progress_interval_s, ctx.log):
                run_img2dataset(job)

        counts = read_download_counts(shards_uri)
        _check_complete(counts, total_shards, total_rows, shards_uri)
        # The tiny site's samples carry the served address: back to the canonical URLs of the metadata.
        ctx.log.debug("download: %d shards rewritten in key order without timestamps (reproducible bytes)",
                      canonicalize_shards(shards_uri, canonical_urls() if site is not None else None))
        shutil.rmtree(parts_dir, ignore_errors=True)  # a copy of the input; kept only for a crashed attempt
        _write_counts_csv(counts, ctx.output_dir / "download_counts.csv")
        for (status, reason), count in sorted(counts.by_status_reason.items(), key=lambda item: -item[1])[:10]:
            if status != "success":
                ctx.log.debug("download: %d x %s (%s): %s", count, reason, status, counts.examples.get(reason, ""))
        metrics = {"images_ok": counts.images_ok, "images_failed": counts.images_failed,
                   "shards": len(counts.shards), "success_rate": counts.images_ok / max(counts.samples, 1)}
        metrics.update({f"images_failed_{reason}": n for reason, n in counts.failed_by_reason().items()})
        return StepResult(metrics=metrics, artifacts=["download_counts.csv"])


def split_metadata(upstream: StepOutput, total_rows: int, cfg: DownloadConfig, parts_dir: Path,
                   ctx: StepContext, url_rewrite: UrlRewrite | None = None) -> str:
    """The input for img2dataset: the metadata file itself, or (when long) a folder of parts of whole shards.

    img2dataset loads an input file in one piece (tens of GB for LAION-2B-scale metadata); parts bound that.
    Parts hold a whole number of shards, so shard N holds the same rows either way and a resumed attempt
    (which rewrites the parts identically) skips the same finished shards. With `url_rewrite` (the tiny site:
    canonical URL -> served address) the URLs are rewritten into parts, even when one part holds them all.
    """
    if total_rows <= cfg.metadata_part_rows and url_rewrite is None:
        return upstream.path(METADATA)
    rows_per_part = max(1, cfg.metadata_part_rows // cfg.samples_per_shard) * cfg.samples_per_shard
    shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir(parents=True)
    part, rows_in_part, writer = 0, 0, None
    with upstream.parquet_file(METADATA) as parquet:
        for batch in parquet.iter_batches(batch_size=min(rows_per_part, 65_536)):
            while batch.num_rows:
                if writer is None:
                    writer = pq.ParquetWriter(parts_dir / f"part-{part:05d}.parquet", parquet.schema_arrow)
                take = min(batch.num_rows, rows_per_part - rows_in_part)
                writer.write_batch(_with_urls(batch.slice(0, take), url_rewrite))
                batch, rows_in_part = batch.slice(take), rows_in_part + take
                if rows_in_part == rows_per_part:
                    writer.close()
                    writer, rows_in_part, part = None, 0, part + 1
    if writer is not None:
        writer.close()
    parts = len(list(parts_dir.glob("*.parquet")))
    if parts > 1:
        ctx.log.info("download: %d URLs split into %d parts of %d rows for img2dataset", total_rows, parts,
                     rows_per_part)
    return str(parts_dir)


def _with_urls(batch: pa.RecordBatch, url_rewrite: UrlRewrite | None) -> pa.RecordBatch:
    if url_rewrite is None:
        return batch
    column = batch.schema.get_field_index("URL")
    return pa.RecordBatch.from_arrays(
        [url_rewrite.apply_arrow(array) if i == column else array for i, array in enumerate(batch.columns)],
        schema=batch.schema)


def img2dataset_job(cfg: DownloadConfig, metadata_uri: str, output_folder: str,
                    distributor: Literal["multiprocessing", "ray"],
                    columns: Sequence[str] = CANONICAL_COLUMNS) -> Img2DatasetJob:
    """The img2dataset arguments for this config; every LAION column present rides along into each sample."""
    return Img2DatasetJob(
        url_list=metadata_uri, output_folder=output_folder, image_size=cfg.image_size,
        resize_mode=cfg.resize_mode, encode_format=cfg.encode_format, encode_quality=cfg.encode_quality,
        number_sample_per_shard=cfg.samples_per_shard, processes_count=cfg.processes_count,
        thread_count=cfg.thread_count, timeout=cfg.timeout_s, retries=cfg.retries, distributor=distributor,
        save_additional_columns=tuple(c for c in CANONICAL_COLUMNS if c in columns and c not in ("URL", "TEXT")),
        respect_opt_out=cfg.respect_opt_out, max_image_area=cfg.max_image_pixels,
    )


def _site_info(upstream: StepOutput) -> dict | None:
    return json.loads(upstream.read_text(SITE_INFO)) if upstream.has(SITE_INFO) else None


@contextlib.contextmanager
def _serving(upstream: StepOutput, site: dict | None, ctx: StepContext) -> Iterator[UrlRewrite | None]:
    """Serve the tiny loopback site (published by prepare_metadata) on a free port while img2dataset runs;
    yields how its canonical URLs map to the served address (None for real metadata)."""
    if site is None:
        yield None
        return
    folder_name = check_relative(site.get("folder", "loopback_site"), upstream.uri, f"{SITE_INFO} folder",
                                 single=True)
    folder = upstream.local_folder(folder_name)  # in place on a local store, fetched once from an object store
    with serve_folder(folder) as server:
        ctx.log.debug("download: serving the tiny photo site %s at %s/", folder, server.base_url)
        yield server.served_urls()


def _check_complete(counts: DownloadCounts, total_shards: int, total_rows: int, shards_uri: str) -> None:
    """img2dataset logs a shard that failed twice and returns normally: an incomplete output must not publish."""
    if len(counts.shards) < total_shards or counts.samples < total_rows:
        raise RuntimeError(
            f"download: only {len(counts.shards)} of {total_shards} shards ({counts.samples} of {total_rows} "
            f"URLs) finished (rerun with --verbose to see img2dataset's own output). The finished shards stay in "
            f"{shards_uri} and a rerun of the same command continues from them"
        )
    fs, root = filesystem(f"{shards_uri}/_tmp")  # img2dataset's own work folder: not part of the output
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _write_counts_csv(counts: DownloadCounts, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["status", "error_reason", "count", "example_message"])
        writer.writerows(counts.csv_rows())
