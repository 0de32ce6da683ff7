"""Step `prepare_metadata`: LAION metadata parquet -> filtered, de-duplicated metadata for img2dataset."""

from __future__ import annotations

import csv
import glob
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq

from vlv.config_tree import RUNTIME_ONLY
from vlv.data.laion import CANONICAL_COLUMNS, DEFAULT_BATCH_ROWS, Funnel, MetadataFilter
from vlv.data.laion_prepare import ParallelPlan, prepare_laion_metadata
from vlv.data.loopback_site import (
    CANONICAL_BASE_URL,
    LoopbackSite,
    TinySiteSpec,
    build_loopback_site,
    probe_urls,
    serve_folder,
)
from vlv.engine.step import OutputFile, Resources, Step, StepContext, StepResult, WorkerPool
from vlv.ports import check_port

SITE_FOLDER = "loopback_site"
WORK_FOLDER = "_work"  # the filter tasks' intermediate files, inside the attempt; removed before publishing
# This step's own task mostly waits for its filter and de-dup tasks, then writes metadata.parquet: half a CPU,
# so on a 2-CPU machine it and the default two tasks of 0.75 CPU all fit at once.
_STEP_TASK_CPUS = 0.5
METADATA = OutputFile("metadata.parquet", "the filtered, de-duplicated LAION rows img2dataset downloads "
                      "(URL, TEXT, WIDTH, HEIGHT and the other LAION columns present)")
FUNNEL = OutputFile("funnel.csv", "rows kept and dropped per filter stage")
SITE_INFO = OutputFile("loopback_site.json", "tiny source or serve_folder: where the photo site is served",
                       required=False)
SITE = OutputFile(f"{SITE_FOLDER}/", "tiny source or serve_folder: the photos the metadata URLs point at",
                  required=False)


@dataclass
class PrepareMetadataConfig:
    # "laion": read LAION parquet from `input_uri`; "tiny": build a LAION-format set of real photos served on
    # loopback HTTP (scikit-image samples and variations, plus broken rows so failure paths always run).
    source: Literal["laion", "tiny"] = "laion"
    input_uri: str = ""  # path, glob, folder or URI (s3://, gs://) of LAION metadata parquet files
    # Our column name -> the name in your LAION release, for columns whose names differ (e.g. {"URL": "link"});
    # common aliases (url, caption, NSFW, prob_watermark, AESTHETIC_SCORE, ...) are recognised without it.
    column_map: dict[str, str] = field(default_factory=dict)
    min_side: int = 512  # keep rows whose shorter side is > min_side (paper)
    min_aspect: float = 0.5  # keep WIDTH / HEIGHT in [min_aspect, max_aspect] (paper)
    max_aspect: float = 2.0
    max_pwatermark: float | None = 0.5  # keep pwatermark < max_pwatermark (paper); null: no watermark test
    max_punsafe: float | None = None  # keep punsafe < max_punsafe when set
    batch_rows: int = DEFAULT_BATCH_ROWS  # rows read per batch: bounds memory on LAION-2B-scale metadata
    # The laion source runs as Ray tasks: `num_tasks` filter tasks over groups of consecutive input files, then
    # as many tasks de-duplicating URLs over `dedup_partitions` hash partitions, held one at a time (about 100
    # bytes per row that passed the filter / dedup_partitions); each task asks `cpus_per_task` CPUs. The defaults
    # fill a 2-CPU machine (this step's own task asks 0.5 more); on a cluster, raise num_tasks to the CPUs to
    # use. One input file (and the tiny source) runs in this step's own task. The output does not depend on them.
    num_tasks: int = field(default=ParallelPlan.num_tasks, metadata=RUNTIME_ONLY)
    cpus_per_task: float = field(default=ParallelPlan.cpus_per_task, metadata=RUNTIME_ONLY)
    dedup_partitions: int = field(default=ParallelPlan.num_partitions, metadata=RUNTIME_ONLY)
    tiny_num_images: int = 24  # tiny source: number of good photos (plus the broken rows)
    tiny_image_side: int = 640  # tiny source: longer side of the served photos
    # tiny source: the 127.0.0.1 port this step serves the photo site on to check it (the download step serves it
    # on a free port of its own); 0 = any free port. Never in the step key: the data holds canonical URLs.
    tiny_port: int = field(default=0, metadata=RUNTIME_ONLY)
    # laion source: a local folder of photos the metadata names by canonical URLs (http://tiny-site.invalid/...,
    # the paper_mini preset's photos). Copied into this step's output; the download step serves it like the tiny
    # site, on a free 127.0.0.1 port, while it runs.
    serve_folder: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source == "tiny" and self.input_uri:
            raise ValueError("prepare_metadata.input_uri is ignored while prepare_metadata.source='tiny' (the tiny "
                             "preset builds its own photo site); to read your LAION parquet add --set "
                             "prepare_metadata.source=laion")
        if not 0 < self.min_aspect <= self.max_aspect:
            raise ValueError(f"prepare_metadata.min_aspect/max_aspect must satisfy 0 < min <= max, "
                             f"got {self.min_aspect}, {self.max_aspect}")
        if self.min_side < 0:
            raise ValueError(f"prepare_metadata.min_side must be >= 0, got {self.min_side}")
        check_port(self.tiny_port, "prepare_metadata.tiny_port")
        if self.serve_folder and self.source != "laion":
            raise ValueError("prepare_metadata.serve_folder is for source='laion' (the tiny source builds and serves "
                             "its own site); clear serve_folder or set source=laion")
        unknown = sorted(set(self.column_map) - set(CANONICAL_COLUMNS))
        if unknown:
            raise ValueError(f"prepare_metadata.column_map keys must be our column names "
                             f"({', '.join(CANONICAL_COLUMNS)}), got {', '.join(unknown)}")
        if self.batch_rows <= 0:
            raise ValueError(f"prepare_metadata.batch_rows must be > 0, got {self.batch_rows}")
        if self.num_tasks < 1:
            raise ValueError(f"prepare_metadata.num_tasks must be >= 1, got {self.num_tasks}")
        if not self.cpus_per_task > 0:
            raise ValueError(f"prepare_metadata.cpus_per_task must be > 0, got {self.cpus_per_task}")
        if self.dedup_partitions < 1:
            raise ValueError(f"prepare_metadata.dedup_partitions must be >= 1, got {self.dedup_partitions}")
        if self.tiny_num_images <= 0:
            raise ValueError(f"prepare_metadata.tiny_num_images must be > 0, got {self.tiny_num_images}")

    def metadata_filter(self) -> MetadataFilter:
        return MetadataFilter(min_side=self.min_side, min_aspect=self.min_aspect, max_aspect=self.max_aspect,
                              max_pwatermark=self.max_pwatermark, max_punsafe=self.max_punsafe)

    def parallel_plan(self) -> ParallelPlan:
        return ParallelPlan(num_tasks=self.num_tasks, cpus_per_task=self.cpus_per_task,
                            num_partitions=self.dedup_partitions)


class PrepareMetadataStep(Step[PrepareMetadataConfig]):
    name = "prepare_metadata"
    upstream = ()
    code_version = "2"  # 2: tiny URLs are canonical (no port)
    description = "Filter LAION metadata (or build the tiny loopback set) for img2dataset"
    outputs = (METADATA, FUNNEL, SITE_INFO, SITE)

    def resources(self, config: PrepareMetadataConfig) -> Resources:
        return Resources(num_cpus=_STEP_TASK_CPUS)

    def worker_pools(self, config: PrepareMetadataConfig) -> tuple[WorkerPool, ...]:
        if config.source != "laion":
            return ()
        return (WorkerPool("metadata_filter", "tasks", config.num_tasks, config.cpus_per_task),)

    def preflight(self, config: PrepareMetadataConfig) -> None:
        if config.source != "laion":
            return
        uri = config.input_uri.strip()
        if not uri:
            raise ValueError("prepare_metadata.input_uri is empty: point it at your LAION metadata parquet "
                             "(a file, folder, glob or s3:// URI) with --set prepare_metadata.input_uri=..., "
                             "or run the offline data with --preset tiny")
        local = uri.removeprefix("file://") if "://" not in uri or uri.startswith("file://") else None
        if local is not None and not glob.glob(local):
            raise ValueError(f"prepare_metadata.input_uri: nothing found at {uri}")
        if config.serve_folder and not Path(config.serve_folder).is_dir():
            raise ValueError(f"prepare_metadata.serve_folder={config.serve_folder!r} is not a folder")

    def run(self, ctx: StepContext[PrepareMetadataConfig]) -> StepResult:
        cfg = ctx.config
        rule = cfg.metadata_filter()
        site: LoopbackSite | None = None
        input_uri = cfg.input_uri
        if cfg.source == "tiny":
            spec = TinySiteSpec(num_images=cfg.tiny_num_images, image_side=cfg.tiny_image_side, seed=cfg.seed)
            site = build_loopback_site(ctx.output_dir / SITE_FOLDER, spec, rule)
            input_uri = str(ctx.output_dir / "source_metadata.parquet")
            pq.write_table(site.rows, input_uri)
            ctx.log.info("prepare_metadata: built the tiny photo site: %d photos, %d rows (broken ones included)",
                         len(site.good_urls), site.rows.num_rows)
        metadata_path = ctx.output_dir / str(METADATA)
        funnel = prepare_laion_metadata(input_uri, str(metadata_path), rule, cfg.column_map, cfg.batch_rows,
                                        plan=cfg.parallel_plan(), work_uri=f"{ctx.output_uri}/{WORK_FOLDER}",
                                        logger=ctx.log)
        if site is not None:
            _check_site_answers(site, metadata_path, cfg.tiny_port, ctx)
            (ctx.output_dir / str(SITE_INFO)).write_text(json.dumps(site.info(), indent=2))
        elif cfg.serve_folder:
            _copy_served_folder(cfg, metadata_path, ctx)
        _write_funnel_csv(funnel, ctx.output_dir / "funnel.csv")
        ctx.log.debug("prepare_metadata funnel: %s", ", ".join(f"{stage}={n}" for stage, n in funnel.rows()))
        metrics = {"rows_read": funnel.rows_read, "rows_kept": funnel.rows_kept}
        metrics.update({f"dropped_{reason}": n for reason, n in funnel.drop_counts().items()})
        return StepResult(metrics=metrics, artifacts=["funnel.csv"])


def _check_site_answers(site: LoopbackSite, metadata_path: Path, port: int, ctx: StepContext) -> None:
    """Serve the site once and probe every kept URL: the photos must answer 200, the deleted ones 404."""
    urls = pq.read_table(metadata_path, columns=["URL"]).column("URL").to_pylist()
    with serve_folder(site.folder, port=port) as server:
        served = probe_urls([server.served_url(url) for url in urls])
        statuses = {url: served[server.served_url(url)] for url in urls}
    ctx.log.info("prepare_metadata: the tiny site answers %s",
                 ", ".join(f"HTTP {code} x {n}" for code, n in sorted(Counter(statuses.values()).items())))
    wrong = [f"{url} -> {statuses[url]}" for url in site.good_urls if statuses.get(url, 200) != 200]
    wrong += [f"{url} -> {statuses[url]}" for url in site.missing_urls if statuses.get(url, 404) != 404]
    if wrong:
        raise RuntimeError(f"the tiny photo site does not answer as built: {'; '.join(wrong[:5])}")


def _copy_served_folder(cfg: PrepareMetadataConfig, metadata_path: Path, ctx: StepContext) -> None:
    """Publish `serve_folder` as this step's loopback site, which the download step serves as it serves the tiny one.

    Copied, so the published output is self-contained: what the download read cannot change under its key.
    """
    prefix = f"{CANONICAL_BASE_URL}/"
    urls = pq.read_table(metadata_path, columns=["URL"]).column("URL").to_pylist()
    served = sum(1 for url in urls if url.startswith(prefix))
    if not served:
        raise ValueError(f"prepare_metadata.serve_folder is set but no kept URL starts with {prefix} (e.g. "
                         f"{urls[0] if urls else 'no rows kept'}); the served folder's photos must be named by "
                         f"canonical URLs {prefix}<path in the folder>")
    shutil.copytree(cfg.serve_folder, ctx.output_dir / SITE_FOLDER)
    (ctx.output_dir / str(SITE_INFO)).write_text(json.dumps({"base_url": CANONICAL_BASE_URL, "folder": SITE_FOLDER},
                                                            indent=2))
    ctx.log.info("prepare_metadata: %d of %d kept URLs name %s, served from a copy of %s during the download",
                 served, len(urls), prefix, cfg.serve_folder)


def _write_funnel_csv(funnel: Funnel, path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["stage", "count"])
        writer.writerows(funnel.rows())
