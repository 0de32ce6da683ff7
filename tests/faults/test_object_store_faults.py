"""Real drivers on an S3 store (moto): two at once on one step key, and a driver killed in the middle of a commit.

On an object store the claim on a step key is a lease object and a publish is an upload followed by an
exclusively created commit record: the second driver must be refused naming the first, and a driver killed
while uploading must leave no commit that names a missing file; the next run then produces the output.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from vlv.engine.manifest import Manifest, verify_files
from vlv.engine.store import RunStore
from vlv.testing.driver_faults import kill_driver, start_driver, wait_for
from vlv.testing.gated_pipeline import EXPERIMENT

HANG_GUARD_S = 900.0


def _gated(store_uri: str, tmp_path: Path, name: str, env: dict[str, str], *extra: str):
    command = [sys.executable, "-m", "vlv.testing.gated_pipeline", "--store", store_uri,
               "--counter-dir", str(tmp_path), *extra]
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    return start_driver(tmp_path / "unused", tmp_path / f"{name}.log", command=command, env=env)


def _lease_holder(store: RunStore) -> str | None:
    """The owner of the newest live lease of step `slow`, or None."""
    try:
        folders = [p for p in store.fs.ls(f"{store.root}/.locks", detail=False) if "/slow-" in p]
    except FileNotFoundError:
        return None
    for folder in folders:
        key = folder.rstrip("/").rsplit("/slow-", 1)[-1]
        lease = store._lease("slow", key)
        epochs = lease.epochs()
        if epochs:
            record, stamped = lease.read(epochs[-1])
            if record is not None and lease.is_live(record, stamped):
                return record.owner
    return None


def _every_commit_names_existing_files(store: RunStore) -> list[str]:
    """Problems of every commit record of step `slow` (all of them, not only the newest)."""
    problems = []
    for key in store.fs.ls(f"{store.root}/steps/slow", detail=False):
        key = key.rstrip("/").rsplit("/", 1)[-1]
        for number in store._commit_numbers("slow", key):
            with store.fs.open(store._commit_path("slow", key, number), "r") as handle:
                manifest = Manifest.from_json(handle.read())
            problems += verify_files(store.data_uri(manifest), manifest, checksums=False)
    return problems


def test_a_second_driver_on_the_same_s3_step_key_is_refused(s3_bucket, tmp_path, cluster_env):
    uri = f"s3://{s3_bucket}/runs"
    store, hold = RunStore(uri), tmp_path / "release"
    first = _gated(uri, tmp_path, "first", cluster_env, "--hold-file", str(hold))
    assert wait_for(first, lambda: _lease_holder(store) is not None, HANG_GUARD_S), first.log()[-3000:]
    owner = _lease_holder(store)
    second = _gated(uri, tmp_path, "second", cluster_env, "--hold-file", str(hold))
    assert second.proc.wait() == 2, second.log()[-3000:]
    assert re.search(rf"error: step 'slow' \(key \w+\) is being produced by run {owner} \(pid {first.pid} ",
                     second.log()), second.log()[-3000:]
    hold.touch()
    assert first.proc.wait() == 0, first.log()[-3000:]
    third = _gated(uri, tmp_path, "third", cluster_env, "--hold-file", str(hold))
    assert third.proc.wait() == 0 and "outcome slow cached" in third.log(), third.log()[-3000:]
    assert (tmp_path / "slow.runs").read_text().count("\n") == 1  # produced once
    assert EXPERIMENT


def test_a_driver_killed_during_the_commit_leaves_no_commit_naming_missing_files(s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/runs"
    store = RunStore(uri)

    def uploading() -> bool:  # the attempt's files are arriving, and no commit record exists yet
        found = store.fs.find(f"{store.root}/steps/slow") if store.fs.exists(f"{store.root}/steps/slow") else []
        store.fs.invalidate_cache()
        return any("/attempts/" in p for p in found) and not any("/commits/" in p for p in found)

    killed = _gated(uri, tmp_path, "killed", {}, "--extra-files", "400")
    assert wait_for(killed, uploading, HANG_GUARD_S, poll_s=0.02), killed.log()[-3000:]
    kill_driver(killed, "slow")
    time.sleep(1)
    assert _every_commit_names_existing_files(store) == []
    rerun = _gated(uri, tmp_path, "rerun", {}, "--extra-files", "400")
    assert rerun.proc.wait() == 0 and "outcome slow executed" in rerun.log(), rerun.log()[-3000:]
    key = store.published_keys("slow")[0]
    output = store.output("slow", key)
    assert len(output.manifest.files) == 401 and verify_files(output.uri, output.manifest) == []
    assert _every_commit_names_existing_files(store) == []
    assert len(store._attempt_ids("slow", key)) == 1  # the killed attempt's partial upload was collected
