"""Ingest caption files into one caption table and one quarantine table, streaming, with bounded memory.

`ingest_captions(sources, ...)` reads each file (local path or fsspec URI, `.gz` and friends decompressed on
the fly) in its format (`caption_formats`), keeps the first good caption of each kept image and writes every
other row to the quarantine with a reason from `QUARANTINE_REASONS`. Output goes to Parquet incrementally:
no table of the whole input is ever in memory.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, deque
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from vlv.data.caption_formats import (
    BATCH_ARROW_SCHEMA,
    CANDIDATE_SCHEMA,
    FORMATS,
    QUARANTINE_SCHEMA,
    ClassifiedBlock,
    Reject,
    classify_batch_block,
    classify_batch_record,
    classify_plain_block,
    classify_plain_record,
    detect_record_format,
    plain_arrow_schema,
    short,
)
from vlv.data.caption_keys import KeptKeys
from vlv.data.caption_lines import (
    LongLine,
    RowFormat,
    iter_line_items,
    long_line_reject,
    parse_range,
    shift_lines,
)

CAPTION_SCHEMA = pa.schema([
    ("key", pa.string()), ("caption", pa.string()), ("caption_chars", pa.int32()), ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int64()), ("output_tokens", pa.int64()),
])
# A further per-row rule on accepted candidates (CANDIDATE_SCHEMA): (row index, Reject) for each row it refuses.
ContentCheck = Callable[[pa.Table], list[tuple[int, Reject]]]
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zstd")
_DETECT_BYTES = 1 << 20


@dataclass(frozen=True)
class IngestOptions:
    format: str = "auto"  # "auto" or one of caption_formats.FORMATS
    key_field: str = "key"
    caption_field: str = "caption"
    max_line_bytes: int = 8 << 20
    chunk_bytes: int = 16 << 20
    parse_bytes: int = 4 << 20  # JSONL is parsed in ranges of about this size, in parallel
    num_threads: int = 0  # 0: one per CPU
    compression: str = "snappy"  # of captions.parquet

    def __post_init__(self) -> None:
        if self.format != "auto" and self.format not in FORMATS:
            raise ValueError(f"caption format must be 'auto' or one of {', '.join(FORMATS)}, got '{self.format}'")
        if min(self.max_line_bytes, self.chunk_bytes, self.parse_bytes) < 1024:
            raise ValueError("max_line_bytes, chunk_bytes and parse_bytes must be at least 1024")


@dataclass
class IngestStats:
    rows_read: int = 0
    captions_ok: int = 0
    quarantined: Counter = field(default_factory=Counter)
    bytes_read: int = 0
    files: int = 0
    seconds: float = 0.0

    @property
    def captions_quarantined(self) -> int:
        return sum(self.quarantined.values())

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


def row_format(name: str, key_field: str = "key", caption_field: str = "caption") -> RowFormat:
    if name in ("gemini_batch", "vertex_batch"):
        return RowFormat(name, BATCH_ARROW_SCHEMA, classify_batch_block, classify_batch_record)
    return RowFormat(name, plain_arrow_schema(key_field, caption_field),
                     lambda batch, lines: classify_plain_block(batch, lines, key_field, caption_field),
                     lambda record: classify_plain_record(record, key_field, caption_field))


# -- sources and formats ------------------------------------------------------------------------------------

def expand_sources(source: str) -> list[str]:
    """Comma-separated paths, globs, folders or fsspec URIs -> the sorted list of files (URIs)."""
    files: list[str] = []
    for item in (s.strip() for s in source.split(",")):
        if not item:
            continue
        fs, path = fsspec.core.url_to_fs(item)
        if any(ch in path for ch in "*?["):
            matches = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            matches = [p for p in fs.find(path) if not os.path.basename(p).startswith((".", "_"))]
        else:
            matches = [path] if fs.isfile(path) else []
        if not matches:
            raise ValueError(f"ingest_captions.source: '{item}' matches no file")
        files += [item if item == p else fs.unstrip_protocol(p) if "://" in item else p for p in sorted(matches)]
    if not files:
        raise ValueError("ingest_captions.source is empty: give a path, glob or URI of caption files")
    return files


def _base_name(uri: str) -> str:
    name = uri.lower().rsplit("/", 1)[-1]
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    return name


# Byte-order marks of the encodings that cannot be read as UTF-8 at all (4-byte ones first: UTF-32-LE's
# starts with UTF-16-LE's). With its BOM, iconv finds the byte order itself.
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
              (b"\xfe\xff", "UTF-16"))


def check_utf8_family(uri: str, head: bytes) -> None:
    """Refuse a UTF-16/UTF-32 text file: every line of it would be quarantined, so say what to do instead.

    JSON and CSV text never holds a raw NUL byte, while UTF-16/32 text of ASCII is half NULs: that tells them
    apart without a BOM. Single-byte encodings (cp1252, latin-1) are not refused: their non-UTF-8 lines are
    quarantined one by one as bad_encoding and their ASCII lines kept.
    """
    encoding = next((name for bom, name in _WIDE_BOMS if head.startswith(bom)), None)
    start = head[:4096]
    if encoding is None and b"\x00" in start:  # no BOM: width from the share of NULs, order from the first byte
        encoding = ("UTF-16" if start.count(b"\x00") < len(start) * 0.6 else "UTF-32") + \
            ("BE" if start[:1] == b"\x00" else "LE")
    if encoding:
        raise ValueError(f"{uri} is {encoding} text, and caption files are read as UTF-8: convert it first, e.g. "
                         f"iconv -f {encoding} -t UTF-8 {uri} > converted.jsonl")


def detect_format(uri: str, options: IngestOptions) -> str:
    """By extension (.parquet, .csv/.tsv), else by the first line of the file that parses as JSON."""
    name = _base_name(uri)
    if options.format == "parquet" or (options.format == "auto" and name.endswith(".parquet")):
        return "parquet"
    with fsspec.open(uri, "rb", compression="infer") as handle:
        head = handle.read(_DETECT_BYTES if options.format == "auto" else 4096)
    check_utf8_family(uri, head)
    if options.format != "auto":
        return options.format
    if name.endswith((".csv", ".tsv")):
        return "csv"
    head = head.removeprefix(b"\xef\xbb\xbf")
    if head.lstrip()[:1] == b"[":
        raise ValueError(f"{uri} is one JSON array, not JSON Lines: write one object a line "
                         "(e.g. `jq -c '.[]' file.json > file.jsonl`)")
    for raw in head.split(b"\n")[:1000]:
        try:  # decoded leniently: this only sniffs the structure; a line that is not UTF-8 is quarantined later
            record = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            continue
        found = detect_record_format(record, options.key_field, options.caption_field)
        if found:
            return found
        break
    raise ValueError(
        f"cannot tell the format of {uri}: its first JSON line is neither Gemini/Vertex batch output (key + "
        f"response/error, or request + status) nor a row with '{options.key_field}' and "
        f"'{options.caption_field}'; set ingest_captions.format (and key_field/caption_field)")


# -- reading each format into classified blocks -------------------------------------------------------------

def _ordered_map(executor: Executor | None, fn: Callable, items: Iterable, inflight: int) -> Iterator:
    if executor is None:
        yield from map(fn, items)
        return
    pending: deque = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= inflight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _jsonl_blocks(handle, fmt: RowFormat, options: IngestOptions, executor: Executor | None,
                  threads: int) -> Iterator[ClassifiedBlock]:
    def work(item: memoryview | LongLine) -> tuple[list[ClassifiedBlock], int]:
        if isinstance(item, LongLine):
            return [long_line_reject(item, options.max_line_bytes)], 1
        return parse_range(item, fmt)

    lines_before = 0
    items = iter_line_items(handle, chunk_bytes=options.chunk_bytes, max_line_bytes=options.max_line_bytes,
                            parse_bytes=options.parse_bytes)
    for blocks, lines in _ordered_map(executor, work, items, inflight=2 * threads + 1):
        for block in blocks:
            yield shift_lines(block, lines_before)
        lines_before += lines


def _utf8_strings(array: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """A binary/string column as valid strings, with a mask of the rows that were not UTF-8 (set to null)."""
    try:
        return array.cast(pa.string()), np.zeros(len(array), bool)
    except pa.ArrowInvalid:
        values = array.cast(pa.binary()).to_pylist()
        bad = np.zeros(len(values), bool)
        texts = []
        for i, value in enumerate(values):
            try:
                texts.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                bad[i] = True
                texts.append(None)
        return pa.array(texts, pa.string()), bad


def _table_block(table: pa.Table, numbers: np.ndarray, options: IngestOptions) -> ClassifiedBlock:
    """A CSV/parquet batch (key and caption columns) -> classified rows, non-UTF-8 rows quarantined."""
    key_field, caption_field = options.key_field, options.caption_field
    key = table.column(key_field).combine_chunks()
    if not (pa.types.is_string(key.type) or pa.types.is_binary(key.type) or pa.types.is_large_string(key.type)):
        key = key.cast(pa.string())  # integer keys in a parquet file: their decimal text
    key, bad_key = _utf8_strings(key)
    caption, bad_caption = _utf8_strings(table.column(caption_field).combine_chunks())
    bad = bad_key | bad_caption
    good = np.flatnonzero(~bad)
    classified = classify_plain_block(pa.table({key_field: key.take(good), caption_field: caption.take(good)}),
                                      numbers[good], key_field, caption_field)
    encoding = [(int(numbers[i]), Reject("bad_encoding", f"'{key_field if bad_key[i] else caption_field}' is not "
                                         "valid UTF-8", key[i].as_py())) for i in np.flatnonzero(bad)]
    return ClassifiedBlock(classified.candidates, sorted(encoding + classified.rejects, key=lambda r: r[0]))


def _require_columns(uri: str, names: Sequence[str], options: IngestOptions) -> None:
    for column, setting in ((options.key_field, "key_field"), (options.caption_field, "caption_field")):
        if column not in names:
            raise ValueError(f"{uri} has no column '{column}' (ingest_captions.{setting}); its columns are: "
                             f"{', '.join(names)}")


def _parquet_blocks(handle, uri: str, options: IngestOptions) -> Iterator[ClassifiedBlock]:
    parquet = pq.ParquetFile(handle)
    _require_columns(uri, parquet.schema_arrow.names, options)
    line = 1
    for batch in parquet.iter_batches(batch_size=65536, columns=[options.key_field, options.caption_field]):
        yield _table_block(pa.Table.from_batches([batch]), np.arange(line, line + batch.num_rows), options)
        line += batch.num_rows


def _csv_blocks(handle, uri: str, options: IngestOptions) -> Iterator[ClassifiedBlock]:
    invalid: list[tuple[int, Reject]] = []

    def on_invalid(row) -> str:
        invalid.append((row.number or 0, Reject("missing_field", short(f"CSV row has {row.actual_columns} columns, the "
                                                              f"header has {row.expected_columns}"))))
        return "skip"

    columns = {options.key_field: pa.binary(), options.caption_field: pa.binary()}
    reader = pacsv.open_csv(
        handle, read_options=pacsv.ReadOptions(block_size=options.chunk_bytes, use_threads=False),
        parse_options=pacsv.ParseOptions(delimiter="\t" if _base_name(uri).endswith(".tsv") else ",",
                                         newlines_in_values=True, invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(column_types=columns, strings_can_be_null=False))
    _require_columns(uri, reader.schema.names, options)
    line = 2  # records are numbered from the header (1); equal to line numbers when no field holds a newline
    for batch in reader:
        skipped, invalid[:] = list(invalid), []
        skipped_numbers = {number for number, _ in skipped}
        numbers = np.array([n for n in range(line, line + batch.num_rows + len(skipped)) if n not in skipped_numbers])
        block = _table_block(pa.Table.from_batches([batch]).select([options.key_field, options.caption_field]),
                             numbers[:batch.num_rows], options)
        line += batch.num_rows + len(skipped)
        yield ClassifiedBlock(block.candidates, sorted(skipped + block.rejects, key=lambda item: item[0]))
    if invalid:
        yield ClassifiedBlock(CANDIDATE_SCHEMA.empty_table(), list(invalid))


# -- writing ------------------------------------------------------------------------------------------------

class _QuarantineSink:
    def __init__(self, path: str):
        self._writer = pq.ParquetWriter(path, QUARANTINE_SCHEMA, compression="zstd")
        self._rows: list[tuple] = []

    def add(self, source: str, line: int, key: str | None, reason: str, detail: str) -> None:
        self._rows.append((source, line, None if key is None else short(key), reason, short(detail)))
        if len(self._rows) >= 50000:
            self.flush()

    def flush(self) -> None:
        if self._rows:
            columns = [pa.array(c, f.type) for c, f in zip(zip(*self._rows), QUARANTINE_SCHEMA)]
            self._writer.write_table(pa.Table.from_arrays(columns, schema=QUARANTINE_SCHEMA))
            self._rows.clear()

    def close(self) -> None:
        self.flush()
        self._writer.close()


class _Acceptor:
    """Applies the order-dependent checks (kept key, first caption wins) and writes both tables."""

    def __init__(self, captions_path: str, quarantine_path: str, kept: KeptKeys | None, options: IngestOptions,
                 stats: IngestStats, content_check: ContentCheck | None = None):
        schema = CAPTION_SCHEMA
        if kept is not None and kept.join is not None:
            schema = pa.schema(list(CAPTION_SCHEMA) + list(kept.join.schema))
        self.schema, self.kept, self.stats, self.content_check = schema, kept, stats, content_check
        self.quarantine = _QuarantineSink(quarantine_path)
        self._writer = pq.ParquetWriter(captions_path, schema, compression=options.compression,
                                        use_dictionary=["finish_reason", "shard"], write_statistics=["key"])
        # Compression and writing run in one background thread (Arrow releases the GIL), overlapping parsing.
        self._write_pool = ThreadPoolExecutor(1, thread_name_prefix="vlv-captions-write")
        self._writes: deque[Future] = deque()
        self._seen: set[str] = set()  # only without a kept-key set

    def accept(self, source: str, block: ClassifiedBlock) -> None:
        self.stats.rows_read += block.candidates.num_rows + len(block.rejects)
        rejects = list(block.rejects)
        table = block.candidates
        rows = None
        if self.content_check is not None and table.num_rows:  # before the key checks: a bad row claims no key
            failed = self.content_check(table)
            if failed:
                lines = table.column("line_number").to_numpy()
                rejects += [(int(lines[i]), reject) for i, reject in failed]
                keep = np.ones(table.num_rows, bool)
                keep[[i for i, _ in failed]] = False
                table = table.filter(pa.array(keep))
        if table.num_rows:
            keys = table.column("key").combine_chunks()
            if self.kept is not None:
                rows = self.kept.lookup(keys)
                unknown = rows < 0
                duplicate = np.zeros(len(rows), bool)
                duplicate[~unknown] = self.kept.claim(rows[~unknown])
            else:
                unknown = np.zeros(len(keys), bool)
                duplicate = np.array([k in self._seen or self._seen.add(k) for k in keys.to_pylist()], bool)
            if unknown.any() or duplicate.any():
                lines = table.column("line_number").to_numpy()
                for i in np.flatnonzero(unknown | duplicate):
                    key = keys[i].as_py()
                    rejects.append((int(lines[i]), Reject("unknown_key", f"no kept image has key {key!r}", key)
                                    if unknown[i] else Reject("duplicate_key", "an earlier row already gave this "
                                                              "image a caption (first one kept)", key)))
                keep = np.flatnonzero(~(unknown | duplicate))
                table = table.take(keep)
                rows = rows[keep] if rows is not None else None
        for line, reject in sorted(rejects, key=lambda item: item[0]):
            self.stats.quarantined[reject.reason] += 1
            self.quarantine.add(source, line, reject.key, reject.reason, reject.detail)
        if not table.num_rows:
            return
        columns = [table.column(name) for name in CAPTION_SCHEMA.names]
        if self.kept is not None and self.kept.join is not None:
            columns += self.kept.join.take(rows).columns
        self._writes.append(self._write_pool.submit(self._writer.write_table,
                                                    pa.Table.from_arrays(columns, schema=self.schema)))
        while len(self._writes) > 2:
            self._writes.popleft().result()
        self.stats.captions_ok += table.num_rows

    def close(self) -> None:
        try:
            while self._writes:
                self._writes.popleft().result()
        finally:
            self._write_pool.shutdown()
            self._writer.close()
            self.quarantine.close()


def ingest_captions(sources: Sequence[str], captions_path: str, quarantine_path: str, *,
                    kept: KeptKeys | None = None, options: IngestOptions = IngestOptions(),
                    progress: Callable[[IngestStats, str], None] | None = None,
                    progress_every_s: float = 5.0, source_names: dict[str, str] | None = None,
                    content_check: ContentCheck | None = None) -> IngestStats:
    """Validate every row of every source; write good captions and the quarantine; return the counts.

    `kept`: the kept-image keys (rows with other keys are `unknown_key`; its `join` columns are appended to
    captions.parquet). Without it every key is accepted and de-duplication holds a Python set of keys.
    `source_names`: how a source is named in the quarantine (default: its URI).
    `content_check`: a further rule on the rows that passed the format checks (e.g. the arena judge's score must
    be an integer 0-6): it returns (row index, Reject) for each row to quarantine, before the key checks.
    """
    stats = IngestStats()
    started = last_report = time.perf_counter()
    formats = {uri: detect_format(uri, options) for uri in sources}  # fail before writing anything
    threads = options.num_threads or os.cpu_count() or 1
    acceptor = _Acceptor(captions_path, quarantine_path, kept, options, stats, content_check)
    executor = ThreadPoolExecutor(threads, thread_name_prefix="vlv-captions") if threads > 1 else None
    try:
        for uri in sources:
            fmt = formats[uri]
            with fsspec.open(uri, "rb", compression="infer") as handle:
                if fmt == "parquet":
                    blocks = _parquet_blocks(handle, uri, options)
                elif fmt == "csv":
                    blocks = _csv_blocks(handle, uri, options)
                else:
                    blocks = _jsonl_blocks(handle, row_format(fmt, options.key_field, options.caption_field),
                                           options, executor, threads)
                name = (source_names or {}).get(uri, uri)
                for block in blocks:
                    acceptor.accept(name, block)
                    now = time.perf_counter()
                    if progress is not None and now - last_report >= progress_every_s:
                        stats.seconds, last_report = now - started, now
                        progress(stats, uri)
            stats.files += 1
            stats.bytes_read += _size(uri)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
        acceptor.close()
    stats.seconds = time.perf_counter() - started
    return stats


def _size(uri: str) -> int:
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        return int(fs.size(path))
    except (OSError, TypeError):
        return 0
