"""A deterministic, nested subset of the training images: the data-scale ablation's "train on N images".

Which images: every key of the samples file gets a rank, a 64-bit hash of (seed, key); the subset of size N is
the N keys of lowest rank (ties, which a 64-bit hash makes very rare, broken by the key itself). So:
- the same N and seed pick the same images on every machine and every rerun (a hash, not an RNG state or the
  file's row order), which a resumed or repeated training relies on;
- the subsets are nested: the 6M images are the first 6M of the same ranking the 18M subset takes its first 18M
  from. A data-scale curve then measures the amount of data alone: the bigger run sees the smaller run's images
  plus more, rather than an unrelated random draw whose content differs as well as its size;
- membership is a per-key test against the last key in (`contains`), so a shard's keys are filtered when that
  shard is opened, and only the per-shard counts are held for the whole set.

Cost: one pass over the file's `key` and `shard` columns, in record batches, hashing each key once (2.7 s per
million keys measured on one shared core, so about two minutes for 40M; 8 bytes of rank and 4 of shard index held
per image). The training step computes it once on
the driver; the stream carries the result to the Ray Train workers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

READ_BATCH_ROWS = 1 << 20


def key_rank(seed: int, key: str) -> int:
    """The image's place in the seeded ranking (lower is taken first): 64 bits of blake2b over seed and key."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")


def key_ranks(seed: int, keys: Iterable[str], count: int) -> np.ndarray:
    return np.fromiter((key_rank(seed, key) for key in keys), dtype=np.uint64, count=count)


@dataclass(frozen=True)
class ImageSubset:
    """The images of a samples file that a cap of `max_images` keeps, as per-shard counts and a membership test."""

    seed: int
    max_images: int
    available: int  # images the samples file lists
    shard_counts: tuple[tuple[str, int], ...]  # (shard, images kept there), shards with none left out, by name
    last: tuple[int, str] | None  # (rank, key) of the last image in; None: the cap keeps every image

    @property
    def used(self) -> int:
        return sum(count for _, count in self.shard_counts)

    def contains(self, keys: list[str]) -> list[bool]:
        """Which of `keys` are in the subset."""
        if self.last is None:
            return [True] * len(keys)
        return [(key_rank(self.seed, key), key) <= self.last for key in keys]


def select_images(samples_uri: str, max_images: int, seed: int) -> ImageSubset:
    """The `max_images` images of lowest seeded rank among those `samples_uri` lists; all of them when it lists
    fewer (`last` is then None: the caller says so, naming both numbers)."""
    import fsspec
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    shard_names: dict[str, int] = {}
    rank_parts, shard_parts = [], []
    with fsspec.open(samples_uri, "rb") as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=READ_BATCH_ROWS, columns=["key", "shard"]):
            keys = [str(k) for k in batch.column(0).to_pylist()]
            shards = pc.dictionary_encode(batch.column(1).cast("string"))
            codes = np.array([shard_names.setdefault(str(name), len(shard_names))
                              for name in shards.dictionary.to_pylist()], dtype=np.int32)
            rank_parts.append(key_ranks(seed, keys, len(keys)))
            shard_parts.append(codes[shards.indices.to_numpy(zero_copy_only=False)])
    ranks = np.concatenate(rank_parts) if rank_parts else np.zeros(0, np.uint64)
    shard_of = np.concatenate(shard_parts) if shard_parts else np.zeros(0, np.int32)
    names = sorted(shard_names, key=shard_names.__getitem__)
    available = len(ranks)

    if max_images >= available:
        return ImageSubset(seed, max_images, available, _counts(names, shard_of), last=None)

    threshold = np.partition(ranks, max_images - 1)[max_images - 1]
    below = ranks < threshold
    tied_rows = np.flatnonzero(ranks == threshold)
    wanted = max_images - int(below.sum())  # how many of the images ranked exactly `threshold` are in
    tied_in_row_order = _keys_at(samples_uri, tied_rows)
    tied_keys = sorted(tied_in_row_order)
    chosen = set(tied_keys[:wanted])
    keep = below
    for row, key in zip(tied_rows, tied_in_row_order):
        keep[row] = key in chosen
    return ImageSubset(seed, max_images, available, _counts(names, shard_of[keep]),
                       last=(int(threshold), tied_keys[wanted - 1]))


def _counts(names: list[str], shard_of: np.ndarray) -> tuple[tuple[str, int], ...]:
    counts = np.bincount(shard_of, minlength=len(names))
    return tuple(sorted((names[i], int(c)) for i, c in enumerate(counts) if c))


def _keys_at(samples_uri: str, rows: np.ndarray) -> list[str]:
    """The keys of the given row numbers (few: the images tied at the boundary rank), in row order."""
    import fsspec
    import pyarrow.parquet as pq

    wanted = {int(r) for r in rows}
    found: list[str] = []
    offset = 0
    with fsspec.open(samples_uri, "rb") as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=READ_BATCH_ROWS, columns=["key"]):
            local = [r - offset for r in sorted(wanted) if offset <= r < offset + batch.num_rows]
            found.extend(str(batch.column(0)[i].as_py()) for i in local)
            offset += batch.num_rows
    return found
