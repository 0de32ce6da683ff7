"""JSON Lines at speed with exact line numbers and bounded memory.

Reading: `iter_line_items` reads `chunk_bytes` at a time and cuts at the last newline, so memory stays near
`chunk_bytes + max_line_bytes` whatever the file size. A line longer than `max_line_bytes` is never held: the
reader keeps its first bytes (for the quarantine record) and skips to the next newline.

Parsing: `parse_range` takes about `parse_bytes` of whole lines (ranges are parsed in parallel, in a thread
pool: the parser releases the GIL). Fast path: when every line of the range is exactly one `{...}` (numpy on
the newline positions), the range is valid UTF-8 (Arrow's SIMD check) and `pyarrow.json.read_json` with the
format's explicit schema returns one row per line, row i is line i and the rows are classified with vectorised
Arrow compute. Otherwise lines that are not a plain `{...}` or not UTF-8 go through the reference per-line
classifier, and runs of plain lines are parsed fast again; when a run fails to parse, the parser's "in row N"
names the bad line, so only that line takes the slow path (when it names none, the run is bisected). Every
row ends up either kept or quarantined with its exact line number.

Why ranges of a few MB in our own thread pool rather than whole 16 MB blocks with pyarrow's threads: a parse
error then costs one small range, and pyarrow's row numbers are only usable with a single parser block.
`benchmarks/bench_ingest.py` measures both strategies side by side.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from vlv.data.caption_formats import (
    CANDIDATE_SCHEMA,
    Candidate,
    ClassifiedBlock,
    Reject,
    candidates_from_records,
    short,
)

BOM = b"\xef\xbb\xbf"
HEAD_BYTES = 4096  # what a quarantine record keeps of a line it could not parse
_BISECT_MIN_LINES = 8
_ROW_IN_ERROR = re.compile(r"in row (\d+)")
_KEY_IN_LINE = re.compile(rb'"(?:key|custom_id|id)"\s*:\s*"([^"\\]{1,256})"')


@dataclass(frozen=True)
class LongLine:
    """A line over max_line_bytes: only its size and first bytes were kept."""

    size: int
    head: bytes


@dataclass(frozen=True)
class RowFormat:
    """How one file format is parsed fast (schema + vectorised classifier) and slowly (per decoded object)."""

    name: str
    arrow_schema: pa.Schema
    classify_block: Callable[[pa.RecordBatch, np.ndarray], ClassifiedBlock]
    classify_record: Callable[[Any], Candidate | Reject]


def iter_line_items(handle: BinaryIO, *, chunk_bytes: int, max_line_bytes: int,
                    parse_bytes: int) -> Iterator[memoryview | LongLine]:
    """Ranges of about parse_bytes of whole lines, and too-long lines, in file order.

    Each read lands in a fresh buffer (`readinto`, no copy) and ranges are views into it, so the data is
    copied once, by the read. A UTF-8 BOM at the start is dropped. No line counting here (it would cost a
    pass over the data): the consumer numbers lines from what the parser finds in each range.
    """
    pending = b""
    skip: list | None = None  # [size so far, head] while skipping a too-long line
    first = True
    while True:
        buf = bytearray(len(pending) + chunk_bytes)
        buf[:len(pending)] = pending
        got = _read_into(handle, memoryview(buf)[len(pending):])
        if not got:
            break
        end, pos = len(pending) + got, 0
        if first:
            first = False
            pos = len(BOM) if buf.startswith(BOM) else 0
        if skip is not None:
            newline = buf.find(b"\n", pos, end)
            if newline < 0:
                skip[0] += end - pos
                pending = b""
                continue
            yield LongLine(skip[0] + newline - pos, skip[1])
            skip, pos = None, newline + 1
        cut = buf.rfind(b"\n", pos, end)
        if cut >= 0:
            yield from _ranges(buf, pos, cut + 1, max_line_bytes, parse_bytes)
            pos = cut + 1
        pending = bytes(memoryview(buf)[pos:end])
        if len(pending) > max_line_bytes:
            skip, pending = [len(pending), pending[:HEAD_BYTES]], b""
    if skip is not None:
        yield LongLine(skip[0], skip[1])
    elif pending:
        yield from _ranges(pending, 0, len(pending), max_line_bytes, parse_bytes)


def _read_into(handle: BinaryIO, view: memoryview) -> int:
    readinto = getattr(handle, "readinto", None)
    if readinto is not None:
        return readinto(view) or 0
    data = handle.read(len(view))
    view[:len(data)] = data
    return len(data)


def _ranges(buf: bytes | bytearray, start: int, end: int, max_line_bytes: int,
            parse_bytes: int) -> Iterator[memoryview | LongLine]:
    """Cut the lines of buf[start:end] into ranges, taking out lines over max_line_bytes (a few rfind calls)."""
    pos = segment = start
    while pos + max_line_bytes < end:
        last = buf.rfind(b"\n", pos, pos + max_line_bytes + 1)
        if last >= 0:  # every line from pos up to `last` is short enough
            pos = last + 1
            continue
        line_end = buf.find(b"\n", pos + max_line_bytes + 1, end)
        line_end = end if line_end < 0 else line_end
        yield from _split(buf, segment, pos, parse_bytes)
        yield LongLine(line_end - pos, bytes(buf[pos:pos + HEAD_BYTES]))
        pos = segment = line_end + 1
    yield from _split(buf, segment, end, parse_bytes)


def _split(buf: bytes | bytearray, start: int, end: int, parse_bytes: int) -> Iterator[memoryview]:
    view = memoryview(buf)
    pos = start
    while pos < end:
        cut = end if pos + parse_bytes >= end else buf.rfind(b"\n", pos, pos + parse_bytes) + 1
        if cut <= pos:  # one line longer than parse_bytes (but within max_line_bytes)
            cut = buf.find(b"\n", pos, end) + 1 or end
        yield view[pos:cut]
        pos = cut


def shift_lines(block: ClassifiedBlock, offset: int) -> ClassifiedBlock:
    """Line numbers relative to a range -> line numbers in the file."""
    if offset == 0:
        return block
    table = block.candidates
    index = table.schema.get_field_index("line_number")
    table = table.set_column(index, "line_number", pc.add(table.column(index), offset))
    return ClassifiedBlock(table, [(line + offset, reject) for line, reject in block.rejects])


def key_in_line(raw: bytes) -> str | None:
    """Best-effort image key of a line we could not parse (for the quarantine record)."""
    found = _KEY_IN_LINE.search(raw[:HEAD_BYTES])
    return found.group(1).decode("utf-8", "replace") if found else None


def long_line_reject(item: LongLine, max_line_bytes: int) -> ClassifiedBlock:
    """The quarantine record of a too-long line (as line 1: the caller shifts it)."""
    reject = Reject("line_too_long", f"line of {item.size:,} bytes > max_line_bytes {max_line_bytes:,}",
                    key_in_line(item.head))
    return ClassifiedBlock(CANDIDATE_SCHEMA.empty_table(), [(1, reject)])


# -- parsing a range ----------------------------------------------------------------------------------------

def _utf8_valid(data: bytes | memoryview) -> bool:
    offsets = pa.py_buffer(np.array([0, len(data)], np.int64).tobytes())
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _read(data: bytes | memoryview, schema: pa.Schema) -> tuple[pa.Table | None, int | None]:
    """Parse with one parser block (so an error's row number counts from the start of `data`)."""
    read_options = pajson.ReadOptions(use_threads=False, block_size=len(data) + 64)
    parse_options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        table = pajson.read_json(pa.BufferReader(pa.py_buffer(data)), read_options=read_options,
                                 parse_options=parse_options)
    except pa.ArrowInvalid as err:
        found = _ROW_IN_ERROR.search(str(err))
        return None, int(found.group(1)) if found else None
    return table, None


def _classify_table(table: pa.Table, numbers: np.ndarray, fmt: RowFormat) -> list[ClassifiedBlock]:
    out, start = [], 0
    for batch in table.to_batches():
        out.append(fmt.classify_block(batch, numbers[start:start + batch.num_rows]))
        start += batch.num_rows
    return out


def _slow_line(raw: bytes, fmt: RowFormat) -> Candidate | Reject | None:
    """The reference path for one line; None for a blank line."""
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return Reject("bad_encoding", f"invalid UTF-8 byte 0x{raw[err.start]:02x} at byte {err.start + 1}",
                      key_in_line(raw))
    if not text.strip(" \t\r\n"):
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as err:
        return Reject("malformed_json", short(f"invalid JSON: {err}"), key_in_line(raw))
    return fmt.classify_record(record)


def _slow_lines(data: bytes | memoryview, starts: np.ndarray, ends: np.ndarray, numbers: np.ndarray,
                fmt: RowFormat) -> ClassifiedBlock:
    kept: list[tuple[int, Candidate]] = []
    rejects: list[tuple[int, Reject]] = []
    for start, end, number in zip(starts.tolist(), ends.tolist(), numbers.tolist()):
        result = _slow_line(bytes(data[start:end]), fmt)
        if isinstance(result, Candidate):
            kept.append((number, result))
        elif result is not None:
            rejects.append((number, result))
    return ClassifiedBlock(candidates_from_records(kept) if kept else CANDIDATE_SCHEMA.empty_table(), rejects)


def _parse_run(data: bytes | memoryview, starts: np.ndarray, ends: np.ndarray, numbers: np.ndarray,
               fmt: RowFormat, attempt: tuple[pa.Table | None, int | None] | None = None) -> list[ClassifiedBlock]:
    """Lines that are each one `{...}`: parse fast; a failure costs only the line the parser names.

    When the parser names no row (a type error, or two objects on one line making rows and lines disagree),
    the run is bisected, so the slow path still sees only a few lines around the bad one.
    """
    out: list[ClassifiedBlock] = []
    lo = 0
    while lo < len(starts):
        table, bad_row = attempt or _read(data[starts[lo]:ends[-1]], fmt.arrow_schema)
        attempt = None
        if table is not None and table.num_rows == len(starts) - lo:
            return out + _classify_table(table, numbers[lo:], fmt)
        if table is not None or bad_row is None or bad_row >= len(starts) - lo:
            # No usable row number (e.g. two objects on one line, or a value of the wrong type): bisect.
            if len(starts) - lo <= _BISECT_MIN_LINES:
                return out + [_slow_lines(data, starts[lo:], ends[lo:], numbers[lo:], fmt)]
            mid = (lo + len(starts)) // 2
            return out + _parse_run(data, starts[lo:mid], ends[lo:mid], numbers[lo:mid], fmt) + \
                _parse_run(data, starts[mid:], ends[mid:], numbers[mid:], fmt)
        bad = lo + bad_row
        if bad > lo:  # normally parses in one go; if the row number was off (two objects on a line), it bisects
            out += _parse_run(data, starts[lo:bad], ends[lo:bad], numbers[lo:bad], fmt)
        out.append(_slow_lines(data, starts[bad:bad + 1], ends[bad:bad + 1], numbers[bad:bad + 1], fmt))
        lo = bad + 1
    return out


def parse_range(data: bytes | memoryview, fmt: RowFormat) -> tuple[list[ClassifiedBlock], int]:
    """Classify every line of a range; line numbers count from 1 at the range start. Returns (blocks, lines)."""
    raw = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(raw == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [len(data)]])
    if raw[-1] == 10:
        starts, ends = starts[:-1], ends[:-1]
    count = len(starts)
    numbers = np.arange(1, count + 1)
    # A "plain" line is exactly one `{...}` (a trailing CR allowed): it cannot be blank, nor part of a value
    # spread over lines, so a parse that returns one row per plain line maps row i to line i exactly.
    nonempty = ends > starts
    last = np.where(nonempty, ends - 1, starts)
    last = np.where((ends - starts > 1) & (raw[np.minimum(last, len(raw) - 1)] == 13), last - 1, last)
    plain = nonempty & (raw[np.minimum(starts, len(raw) - 1)] == ord("{")) & \
        (raw[np.minimum(last, len(raw) - 1)] == ord("}"))
    utf8_ok = _utf8_valid(data)
    if utf8_ok and plain.all():
        attempt = _read(data, fmt.arrow_schema)
        if attempt[0] is not None and attempt[0].num_rows == count:
            return _classify_table(attempt[0], numbers, fmt), count
        return _parse_run(data, starts, ends, numbers, fmt, attempt), count
    if not utf8_ok:
        plain &= np.array([_utf8_valid(data[s:e]) for s, e in zip(starts.tolist(), ends.tolist())], bool)
    out: list[ClassifiedBlock] = []
    edges = np.flatnonzero(np.diff(np.concatenate([[False], plain, [False]]).astype(np.int8)))
    cursor = 0
    for run_start, run_end in zip(edges[0::2].tolist(), edges[1::2].tolist()):
        if run_start > cursor:
            out.append(_slow_lines(data, starts[cursor:run_start], ends[cursor:run_start],
                                   numbers[cursor:run_start], fmt))
        out += _parse_run(data, starts[run_start:run_end], ends[run_start:run_end], numbers[run_start:run_end], fmt)
        cursor = run_end
    if cursor < count:
        out.append(_slow_lines(data, starts[cursor:], ends[cursor:], numbers[cursor:], fmt))
    return out, count
