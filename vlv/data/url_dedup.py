"""Exact URL de-duplication over tens of millions of rows, in parts that fit in memory and run in parallel.

Every row that passed the filter carries an order key, (file index, row in file) packed into one int64, so
"first occurrence" means first by (file order, row order) wherever the row was processed. URLs are spread over
partitions by a 64-bit hash (pandas' vectorised SipHash); all copies of a URL land in the same partition, so
each partition is de-duplicated alone, on the URL strings themselves: a hash collision can only put two
different URLs in the same partition, never drop one. Only the order keys of the dropped copies leave a
partition (8 bytes per duplicate).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROW_BITS = 40  # rows per file < 2**40; file index < 2**23


def order_keys(file_index: int, rows: np.ndarray) -> np.ndarray:
    """The int64 order keys of `rows` (0-based positions) of the `file_index`-th input file."""
    if file_index >= 2 ** (63 - ROW_BITS):
        raise ValueError(f"prepare_metadata reads at most {2 ** (63 - ROW_BITS)} files, got file #{file_index}")
    return (np.int64(file_index) << np.int64(ROW_BITS)) + rows.astype(np.int64, copy=False)


def hash_urls(urls: pa.Array) -> np.ndarray:
    """uint64 hashes of the URL strings (deterministic across processes and runs)."""
    if len(urls) == 0:
        return np.empty(0, dtype=np.uint64)
    import pandas as pd  # heavy (0.7 s, +92 MiB) and needed only by the dedup tasks, not by the driver's config

    return pd.util.hash_array(urls.to_numpy(zero_copy_only=False), categorize=False)


def url_partitions(urls: pa.Array, num_partitions: int) -> np.ndarray:
    """The partition (0 .. num_partitions-1) of each URL: a function of the string only."""
    return (hash_urls(urls) % np.uint64(num_partitions)).astype(np.int64)


def first_occurrence_mask(urls: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """True at the first row of each distinct URL string (exact: compares the strings, not hashes).

    Arrow's dictionary encoding numbers distinct values in order of first appearance, so a row is a first
    occurrence exactly when its number exceeds every number before it.
    """
    if len(urls) == 0:
        return np.zeros(0, dtype=bool)
    if isinstance(urls, pa.ChunkedArray):
        urls = urls.combine_chunks()  # one dictionary for all rows
    indices = pc.dictionary_encode(urls).indices.to_numpy().astype(np.int64, copy=False)
    seen_before = np.maximum.accumulate(np.concatenate([[-1], indices[:-1]]))
    return indices > seen_before


def sorted_contains(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`np.isin(values, sorted_values)` for an ascending `sorted_values`, by binary search."""
    if len(sorted_values) == 0 or len(values) == 0:
        return np.zeros(len(values), dtype=bool)
    index = np.searchsorted(sorted_values, values).clip(max=len(sorted_values) - 1)
    return sorted_values[index] == values
