"""Reading and filtering LAION metadata parquet, one record batch at a time.

LAION-2B-en-aesthetic metadata is tens of millions of rows, so files are streamed as record batches; the
parallel job that filters every file and de-duplicates URLs across them is `vlv.data.laion_prepare`. Releases name
their columns differently (`url`/`caption`/`NSFW`/`prob_watermark`/...): known aliases are mapped to the
canonical names automatically and a user's explicit `column_map` wins. A row that cannot pass (null or
non-http(s) URL, size that is not a positive number, unreadable probability) is dropped and counted with its
reason in the `Funnel`, never silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Mapping

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

CANONICAL_SCHEMA = pa.schema([
    ("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.int64()), ("HEIGHT", pa.int64()),
    ("similarity", pa.float64()), ("hash", pa.int64()), ("punsafe", pa.float64()),
    ("pwatermark", pa.float64()), ("aesthetic", pa.float64()),
])
CANONICAL_COLUMNS: tuple[str, ...] = tuple(CANONICAL_SCHEMA.names)

# Names seen in LAION releases (LAION-400M, LAION-5B, LAION-2B-en-aesthetic, community re-exports); matched
# case-insensitively, in this order, after an exact match of the canonical name.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "URL": ("url", "image_url", "img_url", "link"),
    "TEXT": ("text", "caption", "alt_text", "alt"),
    "WIDTH": ("width", "image_width", "original_width"),
    "HEIGHT": ("height", "image_height", "original_height"),
    "similarity": ("similarity", "clip_similarity", "similarity_score"),
    "hash": ("hash", "url_hash"),
    "punsafe": ("punsafe", "pnsfw", "prob_unsafe", "nsfw"),
    "pwatermark": ("pwatermark", "prob_watermark", "watermark"),
    "aesthetic": ("aesthetic", "aesthetic_score", "aesthetic_score_v2"),
}
# LAION-400M ships NSFW as a label, not a probability; these are the labels' meaning on the punsafe scale.
NSFW_LABELS = {"UNLIKELY": 0.0, "UNSURE": 0.5, "NSFW": 1.0}
DEFAULT_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class MetadataFilter:
    """The paper's pre-filter (docs/DESIGN.md section 3); a None threshold switches that test off."""

    min_side: int = 512
    min_aspect: float = 0.5
    max_aspect: float = 2.0
    max_pwatermark: float | None = 0.5
    max_punsafe: float | None = None

    def required_columns(self) -> tuple[str, ...]:
        needed = ["URL", "WIDTH", "HEIGHT"]
        if self.max_pwatermark is not None:
            needed.append("pwatermark")
        if self.max_punsafe is not None:
            needed.append("punsafe")
        return tuple(needed)


@dataclass
class Funnel:
    """How many rows were read, dropped (first failing test wins, in field order) and kept."""

    rows_read: int = 0
    invalid_url: int = 0  # null, empty or not http(s)
    invalid_size: int = 0  # WIDTH/HEIGHT null, not a number, or <= 0
    too_small: int = 0
    bad_aspect: int = 0
    invalid_pwatermark: int = 0  # null, not a number, or outside [0, 1]
    watermarked: int = 0
    invalid_punsafe: int = 0
    unsafe: int = 0
    duplicate_url: int = 0
    rows_kept: int = 0

    def drop_counts(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("rows_read", "rows_kept")}

    def rows(self) -> list[tuple[str, int]]:
        """(stage, count) rows for funnel.csv: read, each drop reason, kept."""
        return ([("rows_read", self.rows_read)] + [(f"dropped_{k}", v) for k, v in self.drop_counts().items()]
                + [("rows_kept", self.rows_kept)])

    def add(self, other: Funnel) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass(frozen=True)
class ColumnMapping:
    """Canonical name -> the column that holds it in one input file (absent canonical names are missing)."""

    source: dict[str, str]

    def missing(self) -> list[str]:
        return [c for c in CANONICAL_COLUMNS if c not in self.source]


# -- locating and opening files --------------------------------------------------------------------------------


def list_parquet_files(input_uri: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """A file, a glob, or a folder (every *.parquet below it, skipping _ and . names) on any fsspec filesystem."""
    fs, path = fsspec.core.url_to_fs(input_uri)
    if any(ch in path for ch in "*?["):
        files = sorted(p for p in fs.glob(path) if fs.isfile(p))
    elif fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet")
                       and not any(part.startswith(("_", ".")) for part in p[len(path):].split("/")))
    elif fs.exists(path):
        files = [path]
    else:
        raise ValueError(f"prepare_metadata.input_uri: {input_uri} does not exist; point it at a LAION metadata "
                         f"parquet file, a folder of them or a glob such as 'laion/*.parquet'")
    if not files:
        raise ValueError(f"prepare_metadata.input_uri: no parquet file found at {input_uri}")
    return fs, files


def open_parquet(fs: fsspec.AbstractFileSystem, path: str) -> pq.ParquetFile:
    """Open one file, turning Arrow's errors for an empty or non-parquet file into a message naming it."""
    try:
        # A local file is read by Arrow's own I/O (no Python file object in the hot path).
        return pq.ParquetFile(path if isinstance(fs, LocalFileSystem) else fs.open(path, "rb"))
    except (pa.ArrowInvalid, OSError) as err:
        size = fs.size(path)
        what = "is empty (0 bytes)" if size == 0 else f"is not a parquet file ({err})"
        raise ValueError(f"LAION metadata file {path} {what}; remove it from prepare_metadata.input_uri or "
                         f"replace it with a valid parquet file") from None


def resolve_columns(file_columns: list[str], column_map: Mapping[str, str], required: tuple[str, ...],
                    path: str) -> ColumnMapping:
    """Explicit `column_map` first, then the canonical name, then known aliases (case-insensitive)."""
    by_lower = {c.lower(): c for c in reversed(file_columns)}
    source: dict[str, str] = {}
    for canonical in CANONICAL_COLUMNS:
        if canonical in column_map:
            theirs = column_map[canonical]
            if theirs not in file_columns:
                raise ValueError(f"prepare_metadata.column_map maps {canonical} to '{theirs}', but {path} has no "
                                 f"column '{theirs}'; its columns are: {', '.join(file_columns)}")
            source[canonical] = theirs
        elif canonical in file_columns:
            source[canonical] = canonical
        else:
            for alias in (canonical.lower(), *COLUMN_ALIASES[canonical]):
                if alias in by_lower:
                    source[canonical] = by_lower[alias]
                    break
    mapping = ColumnMapping(source)
    absent = [c for c in required if c not in source]
    if absent:
        example = ", ".join(f'"{c}": "<your column>"' for c in absent)
        # A release may simply not have a filter's column: then the filter must go, mapping cannot help.
        switches = {"pwatermark": "prepare_metadata.max_pwatermark=null",
                    "punsafe": "prepare_metadata.max_punsafe=null"}
        drop = [f"--set {switches[c]}" for c in absent if c in switches]
        or_drop = f", or if your release has no such column, turn that filter off with {' '.join(drop)}" if drop else ""
        raise ValueError(
            f"LAION metadata {path} has no column for {', '.join(absent)} (needed by the configured filter); "
            f"columns found: {', '.join(file_columns)}. Map them with "
            f"--set prepare_metadata.column_map='{{{example}}}'{or_drop}"
        )
    return mapping


def check_column_types(schema: pa.Schema, mapping: ColumnMapping, path: str) -> None:
    """A list, struct or map column holds no URL, caption or number: the column (or the mapping) is wrong.

    Scalar columns of any type are read row by row (unreadable values are dropped and counted); a nested one
    would make Arrow's casts fail on the whole file, so it is refused up front with the fix.
    """
    for canonical, theirs in mapping.source.items():
        column_type = schema.field(theirs).type
        if pa.types.is_nested(column_type):
            wanted = "text" if canonical in ("URL", "TEXT") else "numbers"
            raise ValueError(
                f"LAION metadata {path}: column '{theirs}' (read as {canonical}) holds {column_type}, not {wanted}; "
                f"map {canonical} to the right column with "
                f"--set prepare_metadata.column_map='{{\"{canonical}\": \"<your column>\"}}'"
            )


def iter_file_batches(fs: fsspec.AbstractFileSystem, path: str, column_map: Mapping[str, str],
                      required: tuple[str, ...], batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.Table]:
    """One file's batches with canonical column names (only the columns found), in row order."""
    parquet = open_parquet(fs, path)
    mapping = resolve_columns(parquet.schema_arrow.names, column_map, required, path)
    check_column_types(parquet.schema_arrow, mapping, path)
    columns = list(dict.fromkeys(mapping.source.values()))
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
        yield pa.table([batch.column(theirs) for theirs in mapping.source.values()],
                       names=list(mapping.source.keys()))


# -- typing and filtering one batch ---------------------------------------------------------------------------


def to_float64(column: pa.ChunkedArray | pa.Array, labels: Mapping[str, float] | None = None) -> np.ndarray:
    """Numbers (or numeric strings) as float64; anything unreadable becomes NaN, never an exception."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    try:
        values = pc.cast(column, pa.float64())
        return values.to_numpy(zero_copy_only=False).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    out = np.full(len(column), np.nan)
    for i, value in enumerate(column.to_pylist()):
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if labels and isinstance(value, str) and value.strip().upper() in labels:
            out[i] = labels[value.strip().upper()]
            continue
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            pass
    return out


def to_strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return pa.array([v.decode("utf-8", "replace") if v is not None else None for v in column.to_pylist()],
                        pa.string())
    return pc.cast(column, pa.string())


def _optional_float(batch: pa.Table, name: str, labels: Mapping[str, float] | None = None) -> np.ndarray:
    if name not in batch.column_names:
        return np.full(batch.num_rows, np.nan)
    return to_float64(batch.column(name), labels)


def _probability_ok(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values) & (values >= 0.0) & (values <= 1.0)


def filter_batch(batch: pa.Table, rule: MetadataFilter) -> tuple[pa.Table, np.ndarray, Funnel]:
    """Type and test one canonical-named batch: the passing rows (canonical schema), their positions in the
    batch, and the funnel (de-duplication comes later, across all files: `vlv.data.laion_prepare`)."""
    n = batch.num_rows
    funnel = Funnel(rows_read=n)
    urls = to_strings(batch.column("URL"))
    url_ok = pc.fill_null(pc.match_substring_regex(urls, r"^https?://\S", ignore_case=True), False)
    alive = url_ok.to_numpy(zero_copy_only=False).astype(bool)
    funnel.invalid_url = int(n - alive.sum())

    width, height = to_float64(batch.column("WIDTH")), to_float64(batch.column("HEIGHT"))
    with np.errstate(invalid="ignore", divide="ignore"):
        size_ok = np.isfinite(width) & np.isfinite(height) & (width > 0) & (height > 0)
        aspect = width / height
    alive = _drop(alive, size_ok, funnel, "invalid_size")
    alive = _drop(alive, np.fmin(width, height) > rule.min_side, funnel, "too_small")
    alive = _drop(alive, (aspect >= rule.min_aspect) & (aspect <= rule.max_aspect), funnel, "bad_aspect")

    pwatermark = _optional_float(batch, "pwatermark")
    if rule.max_pwatermark is not None:
        alive = _drop(alive, _probability_ok(pwatermark), funnel, "invalid_pwatermark")
        alive = _drop(alive, pwatermark < rule.max_pwatermark, funnel, "watermarked")
    punsafe = _optional_float(batch, "punsafe", NSFW_LABELS)
    if rule.max_punsafe is not None:
        alive = _drop(alive, _probability_ok(punsafe), funnel, "invalid_punsafe")
        alive = _drop(alive, punsafe < rule.max_punsafe, funnel, "unsafe")

    positions = np.flatnonzero(alive)
    keep = pa.array(positions)
    funnel.rows_kept = len(positions)

    def pick(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
        chosen = values[positions]
        return pa.array(np.rint(chosen) if pa.types.is_integer(arrow_type) else chosen,
                        mask=~np.isfinite(chosen)).cast(arrow_type, safe=False)

    text = to_strings(batch.column("TEXT")).take(keep) if "TEXT" in batch.column_names \
        else pa.nulls(len(keep), pa.string())
    columns = [urls.take(keep), text, pick(width, pa.int64()), pick(height, pa.int64()),
               pick(_optional_float(batch, "similarity"), pa.float64()), _hash_column(batch, keep),
               pick(punsafe, pa.float64()), pick(pwatermark, pa.float64()),
               pick(_optional_float(batch, "aesthetic"), pa.float64())]
    kept = pa.table(columns, schema=CANONICAL_SCHEMA)
    assert funnel.rows_read == sum(funnel.drop_counts().values()) + funnel.rows_kept
    return kept, positions, funnel


def _hash_column(batch: pa.Table, keep: pa.Array) -> pa.Array:
    """LAION's int64 URL hash, exactly (through float64 it would round); unreadable values become null."""
    if "hash" not in batch.column_names:
        return pa.nulls(len(keep), pa.int64())
    column = batch.column("hash").take(keep)
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.int64()).combine_chunks()
    values = []
    for value in column.to_pylist():
        try:
            number = int(value)
            values.append(number if -(2**63) <= number < 2**63 else None)
        except (TypeError, ValueError, OverflowError):
            values.append(None)
    return pa.array(values, pa.int64())


def _drop(alive: np.ndarray, passes: np.ndarray, funnel: Funnel, reason: str) -> np.ndarray:
    failing = alive & ~passes
    setattr(funnel, reason, getattr(funnel, reason) + int(failing.sum()))
    return alive & passes
