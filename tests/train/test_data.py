"""The training data stream: disjoint per rank, filtered, joined with captions, deterministic, resumable."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlv.testing.tiny_training import write_shards
from vlv.train.data import ImageStreamConfig, WebDatasetImageStream


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    return write_shards(tmp_path_factory.mktemp("shards"))



def _stream(shards: dict, **overrides) -> WebDatasetImageStream:
    config = ImageStreamConfig(image_size=overrides.pop("image_size", 32), shuffle_buffer=overrides.pop("buffer", 3),
                               seed=overrides.pop("seed", 7))
    samples = "captions.parquet" if overrides.get("with_captions") else "kept.parquet"
    return WebDatasetImageStream(shards_uri=str(shards["dir"]), samples_uri=str(shards["dir"] / samples),
                                 config=config, **overrides)


def _epoch_keys(stream: WebDatasetImageStream, rank: int, world_size: int, epoch: int = 0) -> list[str]:
    entries = stream.shard_entries()
    plan = stream.epoch_shards(entries, epoch=epoch, rank=rank, world_size=world_size)
    skip = sum(e.num_samples for e0 in range(epoch)
               for e in stream.epoch_shards(entries, epoch=e0, rank=rank, world_size=world_size))
    samples = stream.samples(rank=rank, world_size=world_size, start_sample=skip)
    return [key for key, _, _ in itertools.islice(samples, sum(e.num_samples for e in plan))]


def test_ranks_read_disjoint_parts_that_cover_the_kept_samples(shards):
    stream = _stream(shards)
    for epoch in (0, 1):
        rank0, rank1 = _epoch_keys(stream, 0, 2, epoch), _epoch_keys(stream, 1, 2, epoch)
        assert not set(rank0) & set(rank1)
        assert sorted(rank0 + rank1) == sorted(shards["kept"])  # filtered: dropped keys never appear
        assert len(rank0) == len(set(rank0))


def test_batches_are_uint8_images_and_captions_match_keys(shards):
    batch = next(_stream(shards, with_captions=True).batches(rank=0, world_size=2, batch_size=4))
    assert batch.images.dtype.is_floating_point is False and str(batch.images.dtype) == "torch.uint8"
    assert tuple(batch.images.shape) == (4, 32, 32, 3)
    assert batch.captions == [f"a detailed caption of {key}" for key in batch.keys]
    stage1 = next(_stream(shards).batches(rank=0, world_size=2, batch_size=4))
    assert stage1.captions is None


def test_non_square_images_are_resized_and_centre_cropped(shards):
    stream = _stream(shards, image_size=16)
    keys_shard1 = {f"{i:09d}" for i in range(5, 8)} & shards["kept"]
    seen = {}
    for rank in (0, 1):
        for key, image, _ in itertools.islice(stream.samples(rank=rank, world_size=2), 30):
            seen[key] = image
    assert keys_shard1 <= set(seen)
    for key in keys_shard1:
        assert seen[key].shape == (16, 16, 3) and seen[key].dtype == np.uint8


def test_order_is_deterministic_and_changes_with_seed_and_epoch(shards):
    first = _epoch_keys(_stream(shards), 0, 1)
    assert first == _epoch_keys(_stream(shards), 0, 1)
    assert sorted(first) == sorted(shards["kept"])
    assert _epoch_keys(_stream(shards), 0, 1, epoch=1) != first
    assert _epoch_keys(_stream(shards, seed=8), 0, 1) != first


@pytest.mark.parametrize("start_batch", [1, 3, 5, 11])
def test_resuming_at_batch_k_continues_the_same_stream(shards, start_batch):
    stream = _stream(shards)
    reference = list(itertools.islice(stream.batches(rank=1, world_size=2, batch_size=3), start_batch + 4))
    resumed = list(itertools.islice(stream.batches(rank=1, world_size=2, batch_size=3, start_batch=start_batch), 4))
    for expected, got in zip(reference[start_batch:], resumed):
        assert got.keys == expected.keys
        assert bool((got.images == expected.images).all())


def test_more_workers_than_shards_is_a_clear_error(shards):
    with pytest.raises(ValueError, match="cannot be split over 6 workers"):
        next(_stream(shards).batches(rank=0, world_size=6, batch_size=2))


def test_missing_columns_and_missing_shards_are_clear_errors(shards, tmp_path):
    pq.write_table(pa.table({"key": ["000000000"]}), tmp_path / "bad.parquet")
    bad = WebDatasetImageStream(shards_uri=str(shards["dir"]), samples_uri=str(tmp_path / "bad.parquet"))
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['shard'\]"):
        next(bad.batches(rank=0, world_size=1, batch_size=1))
    pq.write_table(pa.table({"key": ["1"], "shard": ["99999.tar"]}), tmp_path / "ghost.parquet")
    ghost = WebDatasetImageStream(shards_uri=str(shards["dir"]), samples_uri=str(tmp_path / "ghost.parquet"))
    with pytest.raises(ValueError, match="99999.tar .* is missing"):
        next(ghost.batches(rank=0, world_size=1, batch_size=1))


def test_a_listed_key_absent_from_its_tar_is_reported(shards, tmp_path: Path):
    rows = pq.read_table(shards["dir"] / "kept.parquet").to_pylist()
    rows.append({**rows[0], "key": "777777777"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "kept.parquet")
    stream = WebDatasetImageStream(shards_uri=str(shards["dir"]), samples_uri=str(tmp_path / "kept.parquet"),
                                   config=ImageStreamConfig(image_size=32, shuffle_buffer=0))
    with pytest.raises(ValueError, match=r"shard 00000.tar holds 4 of the 5 samples"):
        list(itertools.islice(stream.samples(rank=0, world_size=1), 40))


def test_a_damaged_training_checkpoint_is_a_clear_error_naming_its_folder(tmp_path):
    """Resume reads `progress.json` and the DeepSpeed files: a truncated file gives the folder and the fix."""
    import json

    import ray.train
    import torch

    from vlv.train.loop import PROGRESS_FILE, load_checkpoint

    class TorchLoadingEngine:  # the part of a DeepSpeed engine resume uses: it torch.loads the model states
        def load_checkpoint(self, folder, tag, **_):
            return torch.load(Path(folder) / tag / "mp_rank_00_model_states.pt", weights_only=False), {}

    folder = tmp_path / "checkpoint_step_00000003"
    (folder / "step_00000003").mkdir(parents=True)
    states = folder / "step_00000003" / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.ones(1000)}}, states)
    (folder / PROGRESS_FILE).write_text(json.dumps({"step": 3, "samples_seen": 96, "tag": "step_00000003",
                                                    "world_size": 2}))
    checkpoint = ray.train.Checkpoint.from_directory(str(folder))
    assert load_checkpoint(TorchLoadingEngine(), checkpoint, world_size=2).resumed_from_step == 3

    states.write_bytes(states.read_bytes()[:200])  # truncated
    with pytest.raises(RuntimeError, match=f"checkpoint in {folder} cannot be loaded.*--force"):
        load_checkpoint(TorchLoadingEngine(), checkpoint, world_size=2)
    (folder / PROGRESS_FILE).write_text('{"step": 3, "tag"')  # cut-off JSON
    with pytest.raises(RuntimeError, match=f"checkpoint in {folder} cannot be loaded \\(progress.json"):
        load_checkpoint(TorchLoadingEngine(), checkpoint, world_size=2)
