"""Caption file formats: what a row must look like, and why a row is quarantined.

Two row formats share one vocabulary of rejection reasons:

- `batch`: Gemini Batch API output (`{"key": ..., "response": GenerateContentResponse}` or `{"key": ...,
  "error": Status}`) and Vertex AI batch prediction output (`{"status": "", "processed_time": ...,
  "request": {...}, "response": {...}}`, `status` non-empty on failure). Vertex does not echo a request id of
  its own: the key is read from the first of `key` (what `instanceConfig.keyField` writes), `custom_id`, `id`
  (extra top-level fields carried through from the input line), then `request.labels.key`,
  `request.labels.custom_id`, `request.labels.id` (labels set on each request, which Vertex echoes with it).
- `plain`: one key column and one caption column (JSONL, CSV, parquet).

Each format is checked twice, by design: `classify_*_record` works on one decoded JSON object and is the
reference (and the slow path for lines the fast parser rejects); `classify_*_batch` makes the same decisions
with vectorised Arrow compute over a parsed block. Tests run both paths over the same files and require equal
results.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlv.paths import path_problem

# The fixed vocabulary of quarantine reasons (code = position + 1; 0 means "kept").
QUARANTINE_REASONS = (
    "malformed_json", "bad_encoding", "line_too_long", "missing_field", "bad_key", "error_row", "blocked",
    "max_tokens", "empty", "unknown_key", "duplicate_key",
)
REASON_CODE = {reason: i + 1 for i, reason in enumerate(QUARANTINE_REASONS)}
OK = 0
FORMATS = ("gemini_batch", "vertex_batch", "jsonl", "csv", "parquet")

MAX_KEY_CHARS = 256
MAX_DETAIL_CHARS = 200
ASCII_WHITESPACE = " \t\n\r\x0b\x0c"
# finishReason values that mean the model refused (the rest of the non-STOP values are errors).
BLOCK_FINISH_REASONS = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                        "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION")
# The vectorised twin of key_problem: separators, control characters (NUL included), any "..", the name ".".
_BAD_KEY_RE2 = r"[/\\\x00-\x1f\x7f]|\.\.|^\.$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Rows that passed the per-row checks (before the kept-key and duplicate checks), one per source line.
CANDIDATE_SCHEMA = pa.schema([
    ("key", pa.string()), ("caption", pa.string()), ("caption_chars", pa.int32()),
    ("finish_reason", pa.string()), ("prompt_tokens", pa.int64()), ("output_tokens", pa.int64()),
    ("line_number", pa.int64()),
])
QUARANTINE_SCHEMA = pa.schema([
    ("source", pa.string()), ("line_number", pa.int64()), ("key", pa.string()), ("reason", pa.string()),
    ("detail", pa.string()),
])

_PART = pa.struct([("text", pa.string()), ("thought", pa.bool_())])
_LABELS = pa.struct([("key", pa.string()), ("custom_id", pa.string()), ("id", pa.string())])
# What the fast path parses of a batch line; every other field is skipped by the parser.
BATCH_ARROW_SCHEMA = pa.schema([
    ("key", pa.string()), ("custom_id", pa.string()), ("id", pa.string()),
    ("request", pa.struct([("labels", _LABELS)])),
    ("status", pa.string()),
    ("error", pa.struct([("code", pa.int64()), ("message", pa.string()), ("status", pa.string())])),
    ("response", pa.struct([
        ("candidates", pa.list_(pa.struct([("content", pa.struct([("parts", pa.list_(_PART))])),
                                           ("finishReason", pa.string())]))),
        ("promptFeedback", pa.struct([("blockReason", pa.string())])),
        ("usageMetadata", pa.struct([("promptTokenCount", pa.int64()), ("candidatesTokenCount", pa.int64())])),
    ])),
])


@dataclass(frozen=True)
class Candidate:
    key: str
    caption: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str
    key: str | None = None


def short(text: Any, limit: int = MAX_DETAIL_CHARS) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def key_problem(key: str) -> str | None:
    """Why a key cannot name a file under the output folder (None if it can).

    The path rules are the shared ones (`vlv.paths`); keys are stricter still: no '..' anywhere, no control
    character, at most MAX_KEY_CHARS.
    """
    if not key:
        return "empty key"
    if len(key) > MAX_KEY_CHARS:
        return f"key longer than {MAX_KEY_CHARS} characters"
    problem = path_problem(key, single=True)
    if problem:
        return f"key {short(key, 60)!r} {problem}"
    if ".." in key:
        return f"key {short(key, 60)!r} contains '..'"
    if _CONTROL.search(key):
        return f"key {short(key, 60)!r} contains a control character"
    return None


def _encodable(text: str) -> bool:
    """False for strings holding lone surrogates (JSON "\\ud800"), which are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 63 else None


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


# -- the reference, one record at a time ---------------------------------------------------------------------

def batch_record_key(record: dict) -> Any:
    for path in (("key",), ("custom_id",), ("id",), ("request", "labels", "key"),
                 ("request", "labels", "custom_id"), ("request", "labels", "id")):
        value = _get(record, *path)
        if value is not None:
            return value
    return None


def _check_key(key: Any) -> Reject | None:
    if key is None:
        return Reject("missing_field", "no image key (looked for key, custom_id, id, request.labels.key)")
    if not isinstance(key, str):
        return Reject("bad_key", f"key is a JSON {type(key).__name__}, not a string")
    if not _encodable(key):
        return Reject("bad_encoding", "key is not valid UTF-8 (lone surrogate escape)")
    problem = key_problem(key)
    return Reject("bad_key", problem, key) if problem else None


def _describe_error(error: Any) -> str:
    if isinstance(error, dict):
        parts = [str(error.get(k)) for k in ("code", "status", "message") if error.get(k) not in (None, "")]
        return short("error: " + (" ".join(parts) or "(empty error object)"))
    return short(f"error: {error}")


def classify_batch_record(record: Any) -> Candidate | Reject:
    """Gemini/Vertex batch output line (decoded JSON) -> a caption candidate or the reason to quarantine it."""
    if not isinstance(record, dict):
        return Reject("malformed_json", f"line is a JSON {type(record).__name__}, not an object")
    key = batch_record_key(record)
    rejected = _check_key(key)
    if rejected:
        return rejected
    error, status = record.get("error"), record.get("status")
    if error is not None:
        return Reject("error_row", _describe_error(error), key)
    if isinstance(status, dict) or (isinstance(status, str) and status.strip(ASCII_WHITESPACE)):
        return Reject("error_row", _describe_error(status) if isinstance(status, dict) else short(f"status: {status}"),
                      key)
    response = record.get("response")
    if not isinstance(response, dict):
        return Reject("missing_field", "no response, error or status", key)
    block_reason = _get(response, "promptFeedback", "blockReason")
    if block_reason is not None:
        return Reject("blocked", short(f"promptFeedback.blockReason={block_reason}"), key)
    candidates = response.get("candidates")
    if candidates is not None and not isinstance(candidates, list):
        return Reject("missing_field", "response.candidates is not a list", key)
    first = candidates[0] if candidates else None
    if first is not None and not isinstance(first, dict):
        return Reject("missing_field", "response.candidates[0] is not an object", key)
    finish = first.get("finishReason") if first else None
    if finish in BLOCK_FINISH_REASONS:
        return Reject("blocked", f"finishReason={finish}", key)
    if first is None:
        return Reject("empty", "no candidates in the response", key)
    if finish == "MAX_TOKENS":
        tokens = _int_or_none(_get(response, "usageMetadata", "candidatesTokenCount"))
        return Reject("max_tokens", f"finishReason=MAX_TOKENS (truncated after {tokens} output tokens)", key)
    if finish not in (None, "STOP"):
        return Reject("error_row", short(f"finishReason={finish}"), key)
    parts = _get(first, "content", "parts")
    if parts is not None and not isinstance(parts, list):
        return Reject("missing_field", "candidates[0].content.parts is not a list", key)
    texts = [p.get("text") for p in parts or () if isinstance(p, dict) and p.get("thought") is not True]
    if any(t is not None and not isinstance(t, str) for t in texts):
        return Reject("missing_field", "a part's text is not a string", key)
    caption = "".join(t for t in texts if t).strip(ASCII_WHITESPACE)
    if not caption:
        return Reject("empty", "no text in candidates[0].content.parts", key)
    if not _encodable(caption):
        return Reject("bad_encoding", "caption is not valid UTF-8 (lone surrogate escape)", key)
    usage = response.get("usageMetadata")
    return Candidate(key, caption, finish, _int_or_none(_get(usage, "promptTokenCount")),
                     _int_or_none(_get(usage, "candidatesTokenCount")))


def classify_plain_record(record: Any, key_field: str, caption_field: str) -> Candidate | Reject:
    """Plain JSONL/CSV/parquet row (a dict) -> a caption candidate or the reason to quarantine it."""
    if not isinstance(record, dict):
        return Reject("malformed_json", f"line is a JSON {type(record).__name__}, not an object")
    key = record.get(key_field)
    if key is None:
        return Reject("missing_field", f"no '{key_field}' field (ingest_captions.key_field)")
    rejected = _check_key(key)
    if rejected:
        return rejected
    caption = record.get(caption_field)
    if caption is None:
        return Reject("missing_field", f"no '{caption_field}' field (ingest_captions.caption_field)", key)
    if not isinstance(caption, str):
        return Reject("missing_field", f"'{caption_field}' is a JSON {type(caption).__name__}, not a string", key)
    caption = caption.strip(ASCII_WHITESPACE)
    if not caption:
        return Reject("empty", f"'{caption_field}' is empty", key)
    if not _encodable(caption):
        return Reject("bad_encoding", "caption is not valid UTF-8 (lone surrogate escape)", key)
    return Candidate(key, caption)


# -- the fast path: the same decisions over a parsed block ---------------------------------------------------

@dataclass
class ClassifiedBlock:
    """A block's rows that passed (Arrow, CANDIDATE_SCHEMA) and the rows it rejected."""

    candidates: pa.Table
    rejects: list[tuple[int, Reject]]  # (line_number, reject)


def _null(array: pa.Array) -> np.ndarray:
    return array.is_null().to_numpy(zero_copy_only=False)


def _true(array: pa.Array) -> np.ndarray:
    return pc.fill_null(array, False).to_numpy(zero_copy_only=False)


def _bad_key(keys: pa.Array) -> np.ndarray:
    bad = pc.or_(pc.match_substring_regex(keys, _BAD_KEY_RE2),
                 pc.or_(pc.equal(pc.binary_length(keys), 0), pc.greater(pc.utf8_length(keys), MAX_KEY_CHARS)))
    return _true(bad)


def _join_parts(parts: pa.ListArray) -> pa.Array:
    """Per candidate, the concatenated text of its non-thought parts (null when it has no parts)."""
    values = pc.list_flatten(parts)
    texts = pc.struct_field(values, "text")
    thought = _true(pc.struct_field(values, "thought"))
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    if len(values) == len(parts) and not thought.any() and (lengths == 1).all():
        return texts  # the usual case: one text part per candidate, no copy
    if thought.any():
        texts = pc.if_else(pa.array(thought), pa.scalar(None, pa.string()), texts)
    offsets = np.zeros(len(parts) + 1, np.int32)
    np.cumsum(np.nan_to_num(lengths.astype(float)).astype(np.int32), out=offsets[1:])
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), pc.fill_null(texts, "")), "")
    return pc.if_else(parts.is_null(), pa.scalar(None, pa.string()), joined)


def _candidates_table(key: pa.Array, caption: pa.Array, finish: pa.Array, prompt_tokens: pa.Array,
                      output_tokens: pa.Array, line_numbers: np.ndarray) -> pa.Table:
    return pa.Table.from_arrays(
        [key, caption, pc.cast(pc.utf8_length(caption), pa.int32()), finish, prompt_tokens, output_tokens,
         pa.array(line_numbers, pa.int64())], schema=CANDIDATE_SCHEMA)


def _rejects(records: Callable[[int], dict], codes: np.ndarray, line_numbers: np.ndarray,
             classify: Callable[[dict], Candidate | Reject]) -> list[tuple[int, Reject]]:
    """Details for the (rare) rejected rows come from the reference classifier."""
    out = []
    for i in np.flatnonzero(codes):
        reason = QUARANTINE_REASONS[codes[i] - 1]
        result = classify(records(int(i)))
        detail = result.detail if isinstance(result, Reject) and result.reason == reason else reason
        out.append((int(line_numbers[i]), Reject(reason, detail, getattr(result, "key", None))))
    return out


def classify_batch_block(batch: pa.RecordBatch, line_numbers: np.ndarray) -> ClassifiedBlock:
    """Vectorised `classify_batch_record` over a block parsed with BATCH_ARROW_SCHEMA."""
    n = batch.num_rows
    labels = pc.struct_field(batch.column("request"), "labels")
    key = pc.coalesce(batch.column("key"), batch.column("custom_id"), batch.column("id"),
                      pc.struct_field(labels, "key"), pc.struct_field(labels, "custom_id"),
                      pc.struct_field(labels, "id"))
    status = batch.column("status")
    response = batch.column("response")
    candidates = pc.struct_field(response, "candidates")
    n_candidates = pc.fill_null(pc.list_value_length(candidates), 0).to_numpy(zero_copy_only=False)
    # Candidate space: the first candidate of every row that has one.
    cand_values = pc.list_flatten(candidates)
    cand_rows = pc.list_parent_indices(candidates).to_numpy(zero_copy_only=False)
    first = np.ones(len(cand_rows), bool)
    first[1:] = cand_rows[1:] != cand_rows[:-1]
    if not first.all():
        cand_values, cand_rows = cand_values.filter(pa.array(first)), cand_rows[first]
    finish = pc.struct_field(cand_values, "finishReason")
    text = _join_parts(pc.struct_field(pc.struct_field(cand_values, "content"), "parts"))
    text = pc.ascii_trim_whitespace(text)

    def to_rows(cand_mask: np.ndarray) -> np.ndarray:
        rows = np.zeros(n, bool)
        rows[cand_rows] = cand_mask
        return rows

    finish_block = to_rows(_true(pc.is_in(finish, value_set=pa.array(BLOCK_FINISH_REASONS))))
    finish_max = to_rows(_true(pc.equal(finish, "MAX_TOKENS")))
    finish_other = to_rows(~_null(finish) & ~_true(pc.equal(finish, "STOP")))
    text_empty = to_rows(_null(text) | (pc.fill_null(pc.binary_length(text), 0).to_numpy(zero_copy_only=False) == 0))
    status_set = ~_null(status) & _true(pc.greater(pc.binary_length(pc.ascii_trim_whitespace(status)), 0))
    codes = np.select(
        [_null(key), _bad_key(key), ~_null(batch.column("error")), status_set, _null(response),
         ~_null(pc.struct_field(pc.struct_field(response, "promptFeedback"), "blockReason")), finish_block,
         n_candidates == 0, finish_max, finish_other, text_empty],
        [REASON_CODE[r] for r in ("missing_field", "bad_key", "error_row", "error_row", "missing_field", "blocked",
                                  "blocked", "empty", "max_tokens", "error_row", "empty")],
        default=OK).astype(np.int8)
    good = np.flatnonzero(codes == OK)
    cand_of_row = np.full(n, -1, np.int64)
    cand_of_row[cand_rows] = np.arange(len(cand_rows))
    good_cands = cand_of_row[good]
    usage = pc.struct_field(response, "usageMetadata")

    def take(array: pa.Array, index: np.ndarray) -> pa.Array:
        return array if len(index) == len(array) and (index == np.arange(len(array))).all() else array.take(index)

    table = _candidates_table(
        take(key, good), take(text, good_cands), take(finish, good_cands),
        take(pc.struct_field(usage, "promptTokenCount"), good),
        take(pc.struct_field(usage, "candidatesTokenCount"), good),
        line_numbers[good])
    return ClassifiedBlock(table, _rejects(lambda i: batch.slice(i, 1).to_pylist()[0], codes, line_numbers,
                                           classify_batch_record))


def plain_arrow_schema(key_field: str, caption_field: str) -> pa.Schema:
    return pa.schema([(key_field, pa.string()), (caption_field, pa.string())])


def classify_plain_block(batch: pa.RecordBatch | pa.Table, line_numbers: np.ndarray, key_field: str,
                         caption_field: str) -> ClassifiedBlock:
    """Vectorised `classify_plain_record` over a block whose key and caption columns are strings."""
    key, caption = batch.column(key_field), batch.column(caption_field)
    if isinstance(key, pa.ChunkedArray):
        key, caption = key.combine_chunks(), caption.combine_chunks()
    caption = pc.ascii_trim_whitespace(caption)
    codes = np.select(
        [_null(key), _bad_key(key), _null(caption), pc.fill_null(pc.binary_length(caption), 0).to_numpy() == 0],
        [REASON_CODE["missing_field"], REASON_CODE["bad_key"], REASON_CODE["missing_field"], REASON_CODE["empty"]],
        default=OK).astype(np.int8)
    good = np.flatnonzero(codes == OK)
    nulls = pa.nulls(len(good), pa.int64())
    table = _candidates_table(key.take(good), caption.take(good), pa.nulls(len(good), pa.string()), nulls, nulls,
                              line_numbers[good])
    return ClassifiedBlock(table, _rejects(
        lambda i: batch.slice(i, 1).to_pylist()[0], codes, line_numbers,
        lambda record: classify_plain_record(record, key_field, caption_field)))


def candidates_from_records(candidates: list[tuple[int, Candidate]]) -> pa.Table:
    """Slow-path candidates as an Arrow table (CANDIDATE_SCHEMA)."""
    captions = pa.array([c.caption for _, c in candidates], pa.string())
    return pa.Table.from_arrays([
        pa.array([c.key for _, c in candidates], pa.string()), captions,
        pc.cast(pc.utf8_length(captions), pa.int32()),
        pa.array([c.finish_reason for _, c in candidates], pa.string()),
        pa.array([c.prompt_tokens for _, c in candidates], pa.int64()),
        pa.array([c.output_tokens for _, c in candidates], pa.int64()),
        pa.array([line for line, _ in candidates], pa.int64()),
    ], schema=CANDIDATE_SCHEMA)


def detect_record_format(record: Any, key_field: str, caption_field: str) -> str | None:
    """Which format a decoded first line belongs to (None when it matches none)."""
    if not isinstance(record, dict):
        return None
    if "request" in record and ("status" in record or "processed_time" in record):
        return "vertex_batch"
    if "response" in record or "error" in record:
        return "gemini_batch"
    if key_field in record and caption_field in record:
        return "jsonl"
    return None
