"""Webdataset shards as actor-pool work: bundles of whole shards of at least a batch, read and batched in order."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from vlv.steps.shard_batches import (
    ShardBundle,
    ShardBundleActor,
    as_columns,
    bundle_shards,
    read_samples,
    stats_sample_count,
)


def _tar(path: Path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as archive:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return str(path)


def _shard(folder: Path, number: int, samples: int) -> str:
    members = []
    for row in range(samples):
        key = f"{number:05d}{row:04d}"
        members += [(f"{key}.jpg", b"jpeg bytes"), (f"{key}.txt", f"caption {key}".encode())]
    path = _tar(folder / f"{number:05d}.tar", members)
    (folder / f"{number:05d}_stats.json").write_text(json.dumps({"count": samples + 1, "successes": samples}))
    return path


def test_consecutive_shards_are_bundled_until_they_hold_a_batch():
    counts = {"a": 6, "b": 7, "c": 7, "d": 4, "e": 20, "f": 1}
    bundles = list(bundle_shards(list(counts), 8, counts.get))
    assert bundles == [ShardBundle(("a", "b"), 13), ShardBundle(("c", "d"), 11), ShardBundle(("e",), 20),
                       ShardBundle(("f",), 1)]


def test_a_shard_of_unknown_size_is_a_bundle_of_its_own():
    counts = {"a": 3, "b": None, "c": 9}
    assert list(bundle_shards(["a", "b", "c"], 8, counts.get)) == [
        ShardBundle(("a",), 3), ShardBundle(("b",), 0), ShardBundle(("c",), 9)]


def test_samples_are_read_in_tar_order_with_their_members(tmp_path):
    shard = _shard(tmp_path, 0, 3)
    samples = list(read_samples(shard))
    assert [s["__key__"] for s in samples] == ["000000000", "000000001", "000000002"]
    assert samples[1] == {"__key__": "000000001", "__url__": shard, "jpg": b"jpeg bytes",
                          "txt": b"caption 000000001"}
    assert stats_sample_count(shard) == 3
    assert stats_sample_count(_tar(tmp_path / "00009.tar", [("k.jpg", b"x")])) is None


def test_members_of_one_sample_apart_in_the_tar_are_an_error(tmp_path):
    shard = _tar(tmp_path / "bad.tar", [("a.jpg", b"1"), ("b.jpg", b"2"), ("a.txt", b"3")])
    with pytest.raises(ValueError, match="members of sample 'a' are not adjacent"):
        list(read_samples(shard))


def test_columns_fill_missing_members_with_none():
    columns = as_columns([{"__key__": "a", "jpg": b"1"}, {"__key__": "b", "png": b"2"}])
    assert columns == {"__key__": ["a", "b"], "jpg": [b"1", None], "png": [None, b"2"]}


class _BatchSizes:
    """A toy scorer: one row per sample, with the size of the batch it came in."""

    def __init__(self, tag: str):
        self.tag = tag

    def __call__(self, batch: dict) -> pa.Table:
        keys = batch["__key__"]
        return pa.table({"key": keys, "batch": [len(keys)] * len(keys), "tag": [self.tag] * len(keys)})


def test_the_actor_scores_a_bundle_in_batches_across_its_shards(tmp_path):
    shards = [_shard(tmp_path, 0, 6), _shard(tmp_path, 1, 7)]
    actor = ShardBundleActor(scorer_cls=_BatchSizes, scorer_kwargs={"tag": "t"}, batch_size=8)
    table = actor(ShardBundle(tuple(shards), 13))
    assert table["batch"].to_pylist() == [8] * 8 + [5] * 5
    assert table["key"].to_pylist()[5:7] == ["000000005", "000010000"]
    assert actor(ShardBundle((_tar(tmp_path / "empty.tar", []),), 0)) is None
