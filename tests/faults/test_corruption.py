"""A truncated or bit-flipped webdataset shard, a corrupt stage-1 weights export (stage1_trainable.safetensors):
found by the manifest, reported with the file's path and the check that caught it, a downstream run blocked,
`--force <step>` repairs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import full_run
from vlv import cli
from vlv.models.trained_folder import STAGE1_WEIGHTS
from vlv.testing.driver_faults import ancestors, file_digests, published


def _truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _flip_a_bit(path: Path) -> None:
    """Same size, one bit changed in the middle of the file: only a checksum can tell."""
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0x01]))


DAMAGE = {"truncated": (_truncate, "found by the size check"),
          "bit-flipped": (_flip_a_bit, "found by the checksum check")}


def _verify(store: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["verify", "--preset", "tiny", "--store", str(store)])
    return code, capsys.readouterr().out


def _run(store: Path, capsys, *flags: str) -> tuple[int, str]:
    capsys.readouterr()
    code = full_run.main(["--preset", "tiny", "--store", str(store), *flags])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _check_reported(store: Path, damaged: Path, step: str, found_by: str, downstream: str, capsys) -> None:
    code, out = _verify(store, capsys)
    assert code == 1
    assert f"{damaged}: " in out and found_by in out, out
    assert f"--force {step}" in out

    code, out = _run(store, capsys, "--steps", ",".join((*ancestors(downstream), downstream)))
    assert code == 1
    assert f"step '{downstream}' cannot start: the output of '{step}' is damaged ({damaged}: " in out, out
    assert found_by in out and f"Rerun it with --force {step}" in out
    assert published(store, downstream) == []


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_shard_is_reported_blocks_downstream_and_force_repairs_it(damage, tiny_store, seeded_store,
                                                                          capsys):
    store = seeded_store(("prepare_metadata", "download"))
    output = published(store, "download")[0]
    shard = sorted((output / "shards").glob("*.tar"))[1]
    corrupt, found_by = DAMAGE[damage]
    corrupt(shard)
    _check_reported(store, shard, "download", found_by, "aesthetic_filter", capsys)

    code, out = _run(store, capsys, "--steps", "prepare_metadata,download", "--force", "download")
    assert code == 0, out
    code, out = _verify(store, capsys)
    assert code == 0 and "2 published outputs intact" in out, out
    assert file_digests(output) == file_digests(tiny_store / "steps" / "download" / output.name)


def test_corrupt_stage1_weights_are_reported_and_block_stage2(seeded_store, capsys):
    store = seeded_store((*ancestors("train_stage1"), "train_stage1", "ingest_captions"))
    weights = published(store, "train_stage1")[0] / STAGE1_WEIGHTS
    _flip_a_bit(weights)
    _check_reported(store, weights, "train_stage1", "found by the checksum check", "train_stage2", capsys)


@pytest.mark.slow
def test_force_retrains_a_corrupt_stage1_export(seeded_store, capsys):
    store = seeded_store(ancestors("train_stage1") + ("train_stage1",))
    weights = published(store, "train_stage1")[0] / STAGE1_WEIGHTS
    _truncate(weights)
    code, out = _verify(store, capsys)
    assert code == 1 and f"{weights}: " in out and "found by the size check" in out
    code, out = _run(store, capsys, "--steps", "prepare_metadata,download,aesthetic_filter,train_stage1",
                     "--force", "train_stage1")
    assert code == 0, out
    code, out = _verify(store, capsys)
    assert code == 0 and "4 published outputs intact" in out, out
