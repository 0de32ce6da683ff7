"""The stage-1 image cap: the stream draws only the capped subset, which is deterministic and nested."""

from __future__ import annotations

import itertools
import logging
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlv.steps.train_stage1 import TrainStage1Config, count_images
from vlv.testing.tiny_training import write_shards
from vlv.train import data, image_subset
from vlv.train.data import ImageStreamConfig, WebDatasetImageStream
from vlv.train.image_subset import select_images


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    return write_shards(tmp_path_factory.mktemp("shards"))  # 20 images in 5 uneven tars, 15 of them kept


def _stream(shards: dict, max_images: int | None, seed: int = 7) -> WebDatasetImageStream:
    return WebDatasetImageStream(shards_uri=str(shards["dir"]), samples_uri=str(shards["dir"] / "kept.parquet"),
                                 config=ImageStreamConfig(image_size=16, shuffle_buffer=3, seed=seed,
                                                          max_images=max_images))


def _subset(shards: dict, max_images: int, seed: int = 7) -> set[str]:
    stream = _stream(shards, max_images, seed)
    entries = stream.shard_entries()
    epoch = sum(e.num_samples for e in entries)
    return {key for key, _, _ in itertools.islice(stream.samples(rank=0, world_size=1), epoch)}


def test_the_cap_limits_what_the_stream_draws_across_epochs(shards):
    stream = _stream(shards, 6)
    entries = stream.shard_entries()
    assert sum(e.num_samples for e in entries) == 6
    drawn = [key for key, _, _ in itertools.islice(stream.samples(rank=0, world_size=1), 6 * 3)]  # three epochs
    assert len(set(drawn)) == 6 and set(drawn) <= shards["kept"]
    assert sorted(drawn[:6]) == sorted(drawn[6:12]) == sorted(drawn[12:])  # every epoch is the same six images
    per_shard = {e.name: e.num_samples for e in entries}
    for name, count in per_shard.items():  # the counts the resume arithmetic uses are those of the subset
        assert count == sum(1 for key in drawn[:6] if pq.read_table(
            shards["dir"] / "kept.parquet", filters=[("key", "=", key)]).column("shard")[0].as_py() == name)


def test_two_ranks_split_the_capped_subset(shards):
    stream = _stream(shards, 10)
    entries = stream.shard_entries()
    keys = []
    for rank in (0, 1):
        mine = stream.epoch_shards(entries, epoch=0, rank=rank, world_size=2)
        count = sum(e.num_samples for e in mine)
        keys.append([k for k, _, _ in itertools.islice(stream.samples(rank=rank, world_size=2), count)])
    assert not set(keys[0]) & set(keys[1])
    assert set(keys[0]) | set(keys[1]) == _subset(shards, 10)


def test_subsets_are_deterministic_nested_and_follow_the_seed(shards):
    small, middle, large = _subset(shards, 4), _subset(shards, 9), _subset(shards, 15)
    assert len(small) == 4 and len(middle) == 9
    assert small < middle < large == shards["kept"]
    assert _subset(shards, 9) == middle  # a fresh stream picks the same images
    others = [_subset(shards, 9, seed) for seed in (1, 2, 3)]
    assert any(other != middle for other in others)  # the seed picks a different subset


def test_ties_at_the_boundary_are_broken_by_key_and_stay_nested(shards, monkeypatch):
    monkeypatch.setattr(image_subset, "key_rank", lambda seed, key: int(key) // 4)  # ranks tie in fours
    kept = sorted(shards["kept"])  # 000000000, 01, 02, 04, 05, 06, 08, ...: ranks 0,0,0,1,1,1,2,...
    subsets = [select_images(str(shards["dir"] / "kept.parquet"), n, seed=0) for n in (2, 4, 5)]
    members = [{k for k, inside in zip(kept, s.contains(kept)) if inside} for s in subsets]
    assert members == [set(kept[:2]), set(kept[:4]), set(kept[:5])]
    assert [s.used for s in subsets] == [2, 4, 5]
    assert subsets[1].last == (1, "000000004")


def test_a_cap_above_the_kept_images_trains_on_all_with_a_warning(shards, caplog):
    stream = _stream(shards, 40_000_000)
    log = logging.getLogger("vlv.test.image_subset")
    with caplog.at_level(logging.INFO, logger=log.name):
        used = count_images(stream, log)
    assert used == 15 and stream.image_subset().available == 15
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == ["train_stage1.max_images=40000000 exceeds the 15 images aesthetic_filter kept: "
                       "training on all 15"]
    assert _subset(shards, 40_000_000) == shards["kept"]


def test_the_subset_travels_with_the_stream_and_leaves_its_equality_alone(shards, monkeypatch):
    stream = _stream(shards, 5)
    subset = stream.image_subset()
    copy = pickle.loads(pickle.dumps(stream))
    assert copy == _stream(shards, 5)
    monkeypatch.setattr(data, "select_images", None)  # a worker never selects again
    assert copy.image_subset() == subset


def test_uncapped_streams_read_every_kept_image_and_bad_caps_are_refused(shards, tmp_path, caplog):
    assert _stream(shards, None).image_subset() is None
    with caplog.at_level(logging.INFO, logger="vlv.test.image_subset"):
        assert count_images(_stream(shards, None), logging.getLogger("vlv.test.image_subset")) == 15
    assert [r.getMessage() for r in caplog.records] == ["training on all 15 kept images"]
    with pytest.raises(ValueError, match="data.max_images must be >= 1"):
        ImageStreamConfig(max_images=0)
    with pytest.raises(ValueError, match="train_stage1.max_images must be >= 1, or null"):
        TrainStage1Config(max_images=-3)
    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.table({"key": ["a"]}), bare)
    stream = WebDatasetImageStream(shards_uri=str(shards["dir"]), samples_uri=str(bare),
                                   config=ImageStreamConfig(max_images=1))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['shard'\]"):
        stream.shard_entries()
