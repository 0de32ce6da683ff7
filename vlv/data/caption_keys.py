"""The kept-image key set: exact membership, first-wins de-duplication, and the join to kept.parquet.

6M Python strings in a set cost about 0.5 GB; here each key is a fixed-width byte string in one sorted numpy
array (9 bytes a key for img2dataset keys), membership is a binary search per block, and "already has a
caption" is one bit per kept image. That is all the per-row state ingestion holds, plus the kept table's join
columns (shard, url, score) when the caller asks for them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_CHUNK_ROWS = 1 << 20


def fixed_width(strings: pa.Array, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Strings as numpy bytes of dtype S<width>, and a mask of the ones longer than width (truncated)."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    if strings.null_count:
        strings = pc.fill_null(strings, "")
    n = len(strings)
    if not pa.types.is_large_string(strings.type) and not pa.types.is_large_binary(strings.type):
        strings = strings.cast(pa.large_binary() if pa.types.is_binary(strings.type) else pa.large_string())
    _, offsets_buf, data_buf = strings.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[strings.offset:strings.offset + n + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    too_long = lengths > width
    if n and (lengths == width).all():  # all keys the same length (img2dataset): one contiguous slice
        out = data[offsets[0]:offsets[0] + n * width].reshape(n, width)
    else:
        take = np.minimum(lengths, width)
        out = np.zeros((n, width), np.uint8)
        rows = np.repeat(np.arange(n), take)
        cols = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
        out[rows, cols] = data[np.repeat(offsets[:-1], take) + cols]
    return np.ascontiguousarray(out).view(f"S{width}").reshape(n), too_long


class KeptKeys:
    """Keys of the kept images (row order of `join`, when given), looked up by block."""

    def __init__(self, keys: pa.Array | pa.ChunkedArray, join: pa.Table | None = None):
        keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        if join is not None and join.num_rows != len(keys):
            raise ValueError(f"join table has {join.num_rows} rows for {len(keys)} keys")
        valid = keys.is_valid().to_numpy(zero_copy_only=False)
        self.width = max(1, int(pc.max(pc.binary_length(keys)).as_py() or 1)) if len(keys) else 1
        parts = [fixed_width(keys.slice(i, _CHUNK_ROWS), self.width)[0] for i in range(0, len(keys), _CHUNK_ROWS)]
        fixed = np.concatenate(parts) if parts else np.zeros(0, f"S{self.width}")
        rows = np.flatnonzero(valid)
        order = rows[np.argsort(fixed[rows], kind="stable")]
        self._sorted = fixed[order]
        self._order = order  # sorted position -> row in `join`
        self.duplicate_kept_keys = int((self._sorted[1:] == self._sorted[:-1]).sum())
        self._has_caption = np.zeros(len(keys), bool)
        self.join = join
        self.size = len(keys)

    def lookup(self, keys: pa.Array) -> np.ndarray:
        """Row of each key among the kept images, -1 when it is not one of them (first row for repeated keys)."""
        if not len(keys) or not len(self._sorted):
            return np.full(len(keys), -1, np.int64)
        query, too_long = fixed_width(keys, self.width)
        pos = np.minimum(np.searchsorted(self._sorted, query), len(self._sorted) - 1)
        found = (self._sorted[pos] == query) & ~too_long
        return np.where(found, self._order[pos], -1)

    def claim(self, rows: np.ndarray) -> np.ndarray:
        """For kept rows in file order: True where the image already has a caption (a duplicate); marks the rest."""
        duplicate = self._has_caption[rows].copy()
        _, first = np.unique(rows, return_index=True)
        repeated = np.ones(len(rows), bool)
        repeated[first] = False
        duplicate |= repeated
        self._has_caption[rows[~duplicate]] = True
        return duplicate

    @property
    def captioned(self) -> int:
        return int(self._has_caption.sum())
