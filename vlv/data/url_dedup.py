"""URL de-duplication over tens of millions of rows in 8 bytes a URL.

A Python set of 40M URL strings costs several GB; instead each URL is hashed to 64 bits (pandas' vectorised
SipHash) and the hashes live in a few sorted numpy arrays of geometrically growing size (a log-structured
set): a lookup is one binary search per level, an insert merges levels like a binary counter, so the whole
pass is O(n log n) with no per-URL Python objects. Two different URLs share a 64-bit hash with probability
about n^2 / 2^65 (4e-5 for 40M URLs): then the second would be dropped as a duplicate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def hash_urls(urls: np.ndarray) -> np.ndarray:
    """uint64 hashes of an object array of strings (deterministic across processes and runs)."""
    if len(urls) == 0:
        return np.empty(0, dtype=np.uint64)
    return pd.util.hash_array(np.asarray(urls, dtype=object), categorize=False)


def first_occurrences(hashes: np.ndarray) -> np.ndarray:
    """True at the first occurrence of each value (so the first row of a duplicate group wins)."""
    mask = np.zeros(len(hashes), dtype=bool)
    if len(hashes):
        _, first_index = np.unique(hashes, return_index=True)
        mask[first_index] = True
    return mask


class SeenUrlHashes:
    """A set of uint64 hashes stored as sorted arrays; levels[0] is the largest."""

    def __init__(self) -> None:
        self._levels: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    @property
    def num_levels(self) -> int:
        return len(self._levels)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        found = np.zeros(len(hashes), dtype=bool)
        for level in self._levels:
            index = np.searchsorted(level, hashes)
            inside = index < len(level)
            found[inside] |= level[index[inside]] == hashes[inside]
        return found

    def add(self, hashes: np.ndarray) -> None:
        """Insert hashes that are unique and not yet in the set (callers check with `contains` first)."""
        if len(hashes) == 0:
            return
        merged = np.sort(hashes.astype(np.uint64, copy=False))
        while self._levels and len(self._levels[-1]) <= len(merged):
            merged = np.concatenate([self._levels.pop(), merged])
            merged.sort(kind="mergesort")  # two sorted runs: timsort-style merge is linear
        self._levels.append(merged)
