"""LAION metadata files -> one filtered, exactly de-duplicated metadata.parquet, as Ray tasks over file groups.

Three phases, so more CPUs (and nodes) filter more files at once and memory stays bounded whatever the input size:

1. filter (one task per group of consecutive files): stream each file's batches through the filter; write the
   passing rows, each with its order key (file index, row in file), to `filtered-<group>.arrow`, and their
   (URL, key) pairs, spread over `num_partitions` partitions by URL hash, to `urls-<group>.arrow`;
2. de-duplicate (one task per range of partitions): every copy of a URL is in the same partition, so each
   partition is de-duplicated alone, comparing the URL strings (exact: a hash collision only shares a
   partition); the first copy by order key stays; the keys of the others are returned;
3. write (the caller's process): stream the filtered files in file order, drop the duplicate keys, and write
   `metadata.parquet` with the same row groups as one sequential pass would.

The intermediate Arrow IPC files live in `work_uri` (the step's attempt folder in the store, so tasks on other
nodes reach them) and are deleted at the end. The result does not depend on the number of tasks or partitions.
With one group the work runs in this process: a single file, or the tiny presets, start no Ray tasks.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlv.data.laion import (
    CANONICAL_SCHEMA,
    DEFAULT_BATCH_ROWS,
    Funnel,
    MetadataFilter,
    filter_batch,
    iter_file_batches,
    list_parquet_files,
)
from vlv.data.url_dedup import first_occurrence_mask, order_keys, sorted_contains, url_partitions
from vlv.engine.executor import worker_logger
from vlv.engine.pools import map_chunks_with_tasks
from vlv.engine.storage import filesystem, is_remote, local_path_of
from vlv.progress import rate_and_eta

log = logging.getLogger("vlv.data.laion_prepare")
PROGRESS_EVERY_S = 30.0  # a filter task's progress line: files and rows done, rate, ETA

KEY = "_key"
FILTERED_SCHEMA = CANONICAL_SCHEMA.append(pa.field(KEY, pa.int64()))
URLS_SCHEMA = pa.schema([("URL", pa.string()), (KEY, pa.int64())])
_FLUSH_URL_ROWS = 262_144  # (URL, key) pairs buffered per filter task before a write, over all partitions

JobT = TypeVar("JobT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class ParallelPlan:
    """How the job is split: `num_tasks` filter tasks (and de-dup tasks) of `cpus_per_task` CPUs each."""

    num_tasks: int = 2
    cpus_per_task: float = 0.75
    num_partitions: int = 64


@dataclass(frozen=True)
class FilterJob:
    group: int
    files: tuple[tuple[int, str], ...]  # (index among all input files, path)
    fs: fsspec.AbstractFileSystem
    rule: MetadataFilter
    column_map: Mapping[str, str]
    batch_rows: int
    num_partitions: int
    work_uri: str


@dataclass(frozen=True)
class FilteredGroup:
    """What a filter task left in the work folder; `funnel.rows_kept` counts rows before de-duplication."""

    group: int
    funnel: Funnel
    filtered_name: str
    urls_name: str
    partition_batches: tuple[tuple[int, ...], ...]  # per partition: its record batches in urls_name, in order
    files_without_text: tuple[str, ...]


@dataclass(frozen=True)
class DedupJob:
    partitions: tuple[int, ...]
    groups: tuple[FilteredGroup, ...]
    work_uri: str


def prepare_laion_metadata(input_uri: str, output_path: str, rule: MetadataFilter,
                           column_map: Mapping[str, str] | None = None, batch_rows: int = DEFAULT_BATCH_ROWS,
                           *, plan: ParallelPlan = ParallelPlan(), work_uri: str | None = None,
                           logger: logging.Logger = log) -> Funnel:
    """Filter and de-duplicate every parquet file at `input_uri` into one parquet file at `output_path`.

    Rows keep their (file, row) order; of rows with the same URL the first by that order stays.
    `work_uri`: where the intermediate files go (default: a folder beside `output_path`); removed at the end.
    """
    started = time.monotonic()
    fs, files = list_parquet_files(input_uri)
    work = (work_uri or tempfile.mkdtemp(prefix=".metadata-work-", dir=Path(output_path).parent)).rstrip("/")
    try:
        groups = _filter_files(fs, files, rule, column_map or {}, batch_rows, plan, work, logger)
        funnel = Funnel()
        for group in groups:
            funnel.add(group.funnel)
        without_text = [path for group in groups for path in group.files_without_text]
        if without_text:
            logger.warning("LAION metadata at %s has no caption column (TEXT) in %d file(s) (e.g. %s): captions "
                           "will be empty", input_uri, len(without_text), without_text[0])
        _check_rows(funnel, input_uri)
        duplicates = _find_duplicates(groups, plan, work, logger)
        written = _write_metadata(groups, duplicates, output_path, work, batch_rows)
    finally:
        _remove_work(work)
    funnel.duplicate_url = len(duplicates)
    funnel.rows_kept -= len(duplicates)
    assert written == funnel.rows_kept, (written, funnel)
    elapsed = time.monotonic() - started
    logger.info("prepare_metadata: %d rows read, %d kept in %.1fs (%.0f rows/s) by %d filter task(s)",
                funnel.rows_read, funnel.rows_kept, elapsed, funnel.rows_read / max(elapsed, 1e-9), len(groups))
    return funnel


def _check_rows(funnel: Funnel, input_uri: str) -> None:
    if funnel.rows_read == 0:
        raise ValueError(f"prepare_metadata.input_uri: the parquet files at {input_uri} hold no rows")
    if funnel.rows_kept == 0:
        drops = ", ".join(f"{k}={v}" for k, v in funnel.drop_counts().items() if v)
        raise ValueError(f"prepare_metadata: no row of {input_uri} passed the filter ({funnel.rows_read} read; "
                         f"dropped: {drops}); check the column mapping and the min_side/aspect/pwatermark "
                         f"settings")


# -- phase 1: filter --------------------------------------------------------------------------------------------


def _filter_files(fs: fsspec.AbstractFileSystem, files: list[str], rule: MetadataFilter,
                  column_map: Mapping[str, str], batch_rows: int, plan: ParallelPlan, work: str,
                  logger: logging.Logger) -> list[FilteredGroup]:
    indexed = list(enumerate(files))
    jobs = [FilterJob(group, tuple(chunk), fs, rule, dict(column_map), batch_rows, plan.num_partitions, work)
            for group, chunk in enumerate(_split_contiguous(indexed, plan.num_tasks))]
    logger.info("prepare_metadata: filtering %d file(s) in %d group(s)", len(files), len(jobs))
    return _run(filter_file_group, jobs, plan, "vlv:metadata_filter")


def filter_file_group(job: FilterJob) -> FilteredGroup:
    """Phase 1 for one group of files (a Ray task): see the module docstring."""
    funnel = Funnel()
    without_text: list[str] = []
    filtered_name, urls_name = f"filtered-{job.group:05d}.arrow", f"urls-{job.group:05d}.arrow"
    batches_of: list[list[int]] = [[] for _ in range(job.num_partitions)]
    pending: list[list[pa.RecordBatch]] = [[] for _ in range(job.num_partitions)]
    pending_rows = 0
    written = 0
    started = last_report = time.monotonic()
    with _ipc_writer(job.work_uri, filtered_name, FILTERED_SCHEMA) as filtered, \
            _ipc_writer(job.work_uri, urls_name, URLS_SCHEMA) as urls_out:

        def flush() -> None:
            nonlocal written
            for partition, parts in enumerate(pending):
                if parts:
                    urls_out.write_batch(_concat_batches(parts, URLS_SCHEMA))
                    batches_of[partition].append(written)
                    written += 1
                    parts.clear()

        for files_done, (file_index, path) in enumerate(job.files):
            if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                last_report = time.monotonic()
                elapsed = last_report - started
                worker_logger(log.name).info(
                    "prepare_metadata filter group %d: %d/%d files, %d rows read, %s", job.group, files_done,
                    len(job.files), funnel.rows_read, rate_and_eta(files_done, len(job.files), elapsed, "files"))
            first_row = 0
            for batch in iter_file_batches(job.fs, path, job.column_map, job.rule.required_columns(),
                                           job.batch_rows):
                if "TEXT" not in batch.column_names and first_row == 0:
                    without_text.append(path)
                kept, positions, batch_funnel = filter_batch(batch, job.rule)
                funnel.add(batch_funnel)
                keys = pa.array(order_keys(file_index, first_row + positions))
                first_row += batch.num_rows
                filtered.write_table(pa.Table.from_arrays([*kept.columns, keys], schema=FILTERED_SCHEMA))
                if not len(keys):
                    continue
                url_column = kept.column("URL").combine_chunks()
                partitions = url_partitions(url_column, job.num_partitions)
                order = np.argsort(partitions, kind="stable")
                bounds = np.searchsorted(partitions[order], np.arange(job.num_partitions + 1))
                pairs = pa.RecordBatch.from_arrays([url_column, keys], schema=URLS_SCHEMA).take(pa.array(order))
                for partition in np.flatnonzero(np.diff(bounds)):
                    start, end = bounds[partition], bounds[partition + 1]
                    pending[partition].append(pairs.slice(start, end - start))
                pending_rows += len(keys)
                if pending_rows >= _FLUSH_URL_ROWS:
                    flush()
                    pending_rows = 0
        flush()
    return FilteredGroup(job.group, funnel, filtered_name, urls_name, tuple(tuple(b) for b in batches_of),
                         tuple(without_text))


def _concat_batches(parts: list[pa.RecordBatch], schema: pa.Schema) -> pa.RecordBatch:
    return pa.Table.from_batches(parts, schema=schema).combine_chunks().to_batches()[0] if len(parts) > 1 \
        else parts[0]


# -- phase 2: de-duplicate ---------------------------------------------------------------------------------------


def _find_duplicates(groups: list[FilteredGroup], plan: ParallelPlan, work: str,
                     logger: logging.Logger) -> np.ndarray:
    """The order keys of every row whose URL an earlier row (by order key) already has, ascending."""
    num_tasks = min(len(groups), plan.num_partitions)
    jobs = [DedupJob(tuple(chunk), tuple(groups), work)
            for chunk in _split_contiguous(list(range(plan.num_partitions)), num_tasks)]
    logger.info("prepare_metadata: de-duplicating URLs in %d partition(s) by %d task(s)", plan.num_partitions,
                len(jobs))
    parts = _run(dedup_partitions, jobs, plan, "vlv:metadata_dedup")
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)


def dedup_partitions(job: DedupJob) -> np.ndarray:
    """Phase 2 for some partitions (a Ray task): the duplicate rows' keys. Holds one partition at a time."""
    duplicates: list[np.ndarray] = []
    with _ipc_readers(job.work_uri, [g.urls_name for g in job.groups]) as readers:
        for partition in job.partitions:
            batches = [reader.get_batch(i) for reader, group in zip(readers, job.groups)
                       for i in group.partition_batches[partition]]
            if not batches:
                continue
            table = pa.Table.from_batches(batches, schema=URLS_SCHEMA)
            keys = table.column(KEY).to_numpy()
            assert np.all(keys[1:] > keys[:-1]), "a partition's rows must arrive in (file, row) order"
            duplicates.append(keys[~first_occurrence_mask(table.column("URL"))])
    return np.concatenate(duplicates) if duplicates else np.empty(0, dtype=np.int64)


# -- phase 3: write ----------------------------------------------------------------------------------------------


def _write_metadata(groups: list[FilteredGroup], duplicates: np.ndarray, output_path: str, work: str,
                    batch_rows: int) -> int:
    """Stream the filtered rows in file order without the duplicates into `output_path`; returns rows written.

    One row group per `batch_rows` or more rows, cut at the same input batches as a one-process pass would.
    """
    pending: list[pa.Table] = []
    pending_rows = written = 0
    with pq.ParquetWriter(output_path, CANONICAL_SCHEMA) as writer:
        for group in groups:
            with _ipc_readers(work, [group.filtered_name]) as (reader,):
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i)
                    keep = ~sorted_contains(duplicates, batch.column(KEY).to_numpy())
                    rows = pa.Table.from_batches([batch.filter(pa.array(keep))]).select(CANONICAL_SCHEMA.names)
                    pending.append(rows.cast(CANONICAL_SCHEMA))
                    pending_rows += rows.num_rows
                    if pending_rows >= batch_rows:
                        writer.write_table(pa.concat_tables(pending))
                        written += pending_rows
                        pending, pending_rows = [], 0
        if pending_rows:
            writer.write_table(pa.concat_tables(pending))
            written += pending_rows
    return written


# -- running jobs and the work folder ----------------------------------------------------------------------------


def _run(fn: Callable[[JobT], ResultT], jobs: Sequence[JobT], plan: ParallelPlan, name: str) -> list[ResultT]:
    """One job runs here; several run as Ray tasks of `plan.cpus_per_task` CPUs, `plan.num_tasks` at once (the
    step's declared pool)."""
    if len(jobs) == 1:
        return [fn(jobs[0])]
    return map_chunks_with_tasks(fn, jobs, num_cpus=plan.cpus_per_task, name=name, max_concurrent=plan.num_tasks)


def _split_contiguous(items: list[Any], parts: int) -> list[list[Any]]:
    """`items` in at most `parts` consecutive runs of near-equal length (none empty)."""
    parts = max(1, min(parts, len(items)))
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@contextmanager
def _ipc_writer(work_uri: str, name: str, schema: pa.Schema) -> Iterator[pa.ipc.RecordBatchFileWriter]:
    if is_remote(work_uri):
        fs, root = filesystem(work_uri)
        with fs.open(f"{root}/{name}", "wb") as handle, pa.ipc.new_file(handle, schema) as writer:
            yield writer
        return
    folder = Path(local_path_of(work_uri))
    folder.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(folder / name), "wb") as handle, pa.ipc.new_file(handle, schema) as writer:
        yield writer


@contextmanager
def _ipc_readers(work_uri: str, names: list[str]) -> Iterator[list[pa.ipc.RecordBatchFileReader]]:
    """Random-access readers. Local files are read, not memory-mapped: a batch's memory is freed with the batch,
    where mapped pages would stay in this process's resident set until the file is closed."""
    handles: list[Any] = []
    try:
        if is_remote(work_uri):
            fs, root = filesystem(work_uri)
            handles = [fs.open(f"{root}/{name}", "rb") for name in names]
        else:
            handles = [pa.OSFile(str(Path(local_path_of(work_uri)) / name), "rb") for name in names]
        yield [pa.ipc.open_file(handle) for handle in handles]
    finally:
        for handle in handles:
            handle.close()


def _remove_work(work_uri: str) -> None:
    if is_remote(work_uri):
        fs, root = filesystem(work_uri)
        if fs.exists(root):
            fs.rm(root, recursive=True)
        return
    shutil.rmtree(local_path_of(work_uri), ignore_errors=True)
