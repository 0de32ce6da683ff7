"""Webdataset shards as work for an actor pool: bundles of whole shards, read and batched inside the actor.

The work item of a scoring actor is a `ShardBundle`: consecutive shards holding together at least `batch_size`
samples (a shard that alone holds that many is a bundle of its own). The actor reads the bundle's tars itself
(raw member bytes, no decoding: a bad image is the scorer's business), cuts the samples into batches of
`batch_size` in shard and tar order (the last one may be smaller) and hands each batch to the scorer as columns
(`__key__`, `__url__`, one column per member suffix, None where a sample lacks it). Small shards thus never
make small batches, and the batches are the same on every run, hence the same floats. This is how Ray Data's
`read_webdataset` + `map_batches` formed the batches (its blocks were bundled to at least a batch), so scores
did not change when the steps left Ray Data.

Sample counts come from img2dataset's `<shard>_stats.json` (`successes`: the samples written into the tar),
read on the driver: one small file per shard, the tars themselves are read once, by the actors. A shard without
one (written by another tool) is a bundle of its own.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pyarrow as pa

from vlv.engine.storage import filesystem

# A member's sample key is its name up to the first dot of its base name, the rest is its suffix (webdataset).
_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


@dataclass(frozen=True)
class ShardBundle:
    """Consecutive shards (full URIs or paths) scored by one actor call."""

    shards: tuple[str, ...]
    samples: int  # the samples their stats files announce (0 when unknown)


def bundle_shards(shards: list[str], batch_size: int, count: Callable[[str], int | None]) -> Iterator[ShardBundle]:
    """Group consecutive shards until a group holds at least `batch_size` samples (`count`: samples of a shard,
    None when unknown: that shard is a bundle of its own)."""
    group: list[str] = []
    held = 0
    for shard in shards:
        samples = count(shard)
        if samples is None:
            if group:
                yield ShardBundle(tuple(group), held)
                group, held = [], 0
            yield ShardBundle((shard,), 0)
            continue
        group.append(shard)
        held += samples
        if held >= batch_size:
            yield ShardBundle(tuple(group), held)
            group, held = [], 0
    if group:
        yield ShardBundle(tuple(group), held)


def stats_sample_count(shard: str) -> int | None:
    """The samples img2dataset wrote into `shard` (`NNNNN.tar`), from its `NNNNN_stats.json`; None without one."""
    fs, path = filesystem(shard.removesuffix(".tar") + "_stats.json")
    try:
        with fs.open(path, "rb") as handle:
            stats = json.load(handle)
    except FileNotFoundError:
        return None
    successes = stats.get("successes") if isinstance(stats, dict) else None
    return successes if isinstance(successes, int) and successes >= 0 else None


def read_samples(shard: str) -> Iterator[dict[str, Any]]:
    """The samples of one webdataset tar in tar order: `{"__key__", "__url__": shard, suffix: bytes, ...}`.

    Members of one sample must be adjacent in the tar (the webdataset rule); a key seen again after its run
    ended is an error naming the shard, since its sample would silently split in two.
    """
    fs, path = filesystem(shard)
    seen: set[str] = set()
    sample: dict[str, Any] | None = None
    with fs.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
        for member in tar:
            match = _MEMBER.match(member.name) if member.isreg() else None
            if match is None:
                continue
            key, suffix = match.group(1), match.group(2)
            extracted = tar.extractfile(member)
            assert extracted is not None
            data = extracted.read()
            if sample is None or key != sample["__key__"]:
                if sample is not None:
                    seen.add(sample["__key__"])
                    yield sample
                if key in seen:
                    raise ValueError(f"{shard}: the members of sample '{key}' are not adjacent in the tar; rewrite "
                                     "it with its members sorted by name (the webdataset layout)")
                sample = {"__key__": key, "__url__": shard}
            if suffix in sample:
                raise ValueError(f"{shard}: sample '{key}' has two '.{suffix}' members")
            sample[suffix] = data
    if sample is not None:
        yield sample


def as_columns(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A batch of sample dicts as columns, one per key any sample has (None where a sample lacks it)."""
    names = list(dict.fromkeys(name for sample in samples for name in sample))
    return {name: [sample.get(name) for sample in samples] for name in names}


class ShardBundleActor:
    """The pool actor: builds `scorer_cls(**scorer_kwargs)` once (the model load), then per bundle reads its
    shards, scores them in batches of `batch_size` and returns one table of the scorer's rows."""

    def __init__(self, *, scorer_cls: type, scorer_kwargs: dict[str, Any], batch_size: int):
        self.scorer = scorer_cls(**scorer_kwargs)
        self.batch_size = batch_size

    def __call__(self, bundle: ShardBundle) -> pa.Table | None:
        """The scorer's rows for every sample of the bundle, in shard and tar order (None: no sample at all)."""
        tables = []
        batch: list[dict[str, Any]] = []
        for shard in bundle.shards:
            for sample in read_samples(shard):
                batch.append(sample)
                if len(batch) == self.batch_size:
                    tables.append(self.scorer(as_columns(batch)))
                    batch = []
        if batch:
            tables.append(self.scorer(as_columns(batch)))
        return pa.concat_tables(tables) if tables else None
