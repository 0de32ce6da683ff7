"""The object-store protocols on a real S3-compatible server (moto): attempts and commits, the lease, --force."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from vlv.engine.lease import LockLostError, StoreLockedError
from vlv.engine.manifest import Manifest, verify_files
from vlv.engine.storage import create_exclusive, filesystem
from vlv.engine.store import RunStore


def _manifest(step: str, key: str, attempt_files) -> Manifest:
    return Manifest(step, key, "1", {}, {}, attempt_files, {"value": 1.0})


def _produce(store: RunStore, step: str, key: str, content: str, *, big: bytes = b"") -> str:
    attempt = store.begin_attempt(step, key, resume=False)
    (attempt.local_dir / "value.txt").write_text(content)
    if big:  # written straight to the store, as the download step writes its shards
        fs, root = filesystem(f"{attempt.data_uri}/shards/0.bin")
        fs.pipe_file(root, big)
    files = store.attempt_files(attempt)
    store.commit(attempt, _manifest(step, key, files))
    return attempt.attempt_id


def test_commit_publishes_files_uploaded_and_written_in_place(s3_bucket):
    store = RunStore(f"s3://{s3_bucket}/runs")
    assert store.output("alpha", "k1") is None and not store.is_published("alpha", "k1")
    _produce(store, "alpha", "k1", "one", big=b"\x00" * 1000)
    output = store.output("alpha", "k1")
    assert output is not None and output.uri.startswith(f"s3://{s3_bucket}/runs/steps/alpha/k1/attempts/")
    assert output.read_text("value.txt") == "one"
    assert {e.path: e.size for e in output.manifest.files} == {"value.txt": 3, "shards/0.bin": 1000}
    assert verify_files(output.uri, output.manifest) == []
    assert output.local_path("value.txt").read_text() == "one"  # fetched once into the node cache
    assert store.published_keys("alpha") == ["k1"]


def test_force_keeps_the_old_output_readable_until_the_new_one_commits_then_collects_garbage(s3_bucket):
    store = RunStore(f"s3://{s3_bucket}/runs")
    first = _produce(store, "alpha", "k", "old")
    attempt = store.begin_attempt("alpha", "k", resume=False)
    (attempt.local_dir / "value.txt").write_text("new")
    files = store.attempt_files(attempt)  # uploaded, not committed: readers still see the old output
    assert store.output("alpha", "k").read_text("value.txt") == "old"
    store.commit(attempt, _manifest("alpha", "k", files))
    assert store.output("alpha", "k").read_text("value.txt") == "new"
    third = _produce(store, "alpha", "k", "newest")
    attempts = store._attempt_ids("alpha", "k")
    assert first not in attempts and attempt.attempt_id in attempts and third in attempts  # previous one kept


def test_a_resumable_attempt_continues_the_unfinished_one(s3_bucket):
    store = RunStore(f"s3://{s3_bucket}/runs")
    crashed = store.begin_attempt("download", "k", resume=True)
    fs, path = filesystem(f"{crashed.data_uri}/shards/00000.tar")
    fs.pipe_file(path, b"finished shard")
    again = store.begin_attempt("download", "k", resume=True)
    assert again.attempt_id == crashed.attempt_id and again.data_uri == crashed.data_uri
    assert store.begin_attempt("download", "k", resume=False).attempt_id != crashed.attempt_id


def test_two_commits_racing_for_one_number_let_exactly_one_win(s3_bucket):
    store = RunStore(f"s3://{s3_bucket}/runs")
    a, b = (store.begin_attempt("alpha", "k", resume=False) for _ in range(2))
    for attempt, text in ((a, "a"), (b, "b")):
        (attempt.local_dir / "value.txt").write_text(text)
    files_a, files_b = store.attempt_files(a), store.attempt_files(b)
    store.commit(a, _manifest("alpha", "k", files_a))
    original = store._commit_numbers
    store._commit_numbers = lambda step, key: []  # b read "no commit yet" just before a committed
    try:
        with pytest.raises(LockLostError, match="another run committed"):
            store.commit(b, _manifest("alpha", "k", files_b))
    finally:
        store._commit_numbers = original
    assert store.output("alpha", "k").read_text("value.txt") == "a"


def test_exclusive_create_on_s3_and_locally(s3_bucket, tmp_path):
    for uri in (f"s3://{s3_bucket}/x/one.json", str(tmp_path / "one.json")):
        fs, path = filesystem(uri)
        assert create_exclusive(fs, path, b"first") is True
        assert create_exclusive(fs, path, b"second") is False
        assert fs.cat_file(path) == b"first"


def test_second_driver_is_refused_naming_the_first(s3_bucket):
    store = RunStore(f"s3://{s3_bucket}/runs")
    with store.lock("alpha", "k", owner="run-one") as token:
        with pytest.raises(StoreLockedError, match=r"run-one \(pid \d+"):
            with store.lock("alpha", "k", owner="run-two"):
                pass
        store.check_lock("alpha", "k", token)  # still ours
    with store.lock("alpha", "k", owner="run-three"):  # released: the next run takes it at once
        pass


def test_a_lapsed_lease_is_taken_over_and_fences_the_old_holder(s3_bucket, monkeypatch):
    monkeypatch.setenv("VLV_LEASE_TTL_S", "1.5")
    store = RunStore(f"s3://{s3_bucket}/runs")
    lease = store._lease("alpha", "k")
    stalled = lease.acquire("stalled-run", ttl_s=1.5)  # never renewed: a driver frozen or on a lost machine
    stalled.host = "another-host"  # not this machine, so only the expiry can free it
    fs = store.fs
    fs.pipe_file(lease._path(1), json.dumps(stalled.__dict__).encode())
    with pytest.raises(StoreLockedError, match="stalled-run"):
        lease.acquire("new-run", ttl_s=1.5)
    time.sleep(2.5)
    fresh = lease.acquire("new-run", ttl_s=30)
    with pytest.raises(LockLostError, match="no longer holds"):
        lease.check(stalled.token)
    lease.check(fresh.token)


def test_a_dead_driver_on_this_host_does_not_block_until_expiry(s3_bucket):
    store = RunStore(f"s3://{s3_bucket}/runs")
    script = ("import sys, os; from vlv.engine.store import RunStore; s = RunStore(sys.argv[1]); "
              "s._lease('alpha', 'k').acquire('killed-run', ttl_s=600); os._exit(0)")
    subprocess.run([sys.executable, "-c", script, store.uri], check=True, env=os.environ.copy())
    with store.lock("alpha", "k", owner="next-run"):  # the holder's pid is gone: taken over without waiting
        pass


def test_the_lease_is_renewed_while_the_step_runs(s3_bucket, monkeypatch):
    monkeypatch.setenv("VLV_LEASE_TTL_S", "1.2")
    store = RunStore(f"s3://{s3_bucket}/runs")
    with store.lock("alpha", "k", owner="long-run") as token:
        time.sleep(3)  # > 2 x ttl: only renewals keep it
        store.check_lock("alpha", "k", token)
        with pytest.raises(StoreLockedError):
            with store.lock("alpha", "k", owner="intruder"):
                pass


def test_the_runner_on_an_object_store_caches_forces_and_logs_artifacts(ray_session, s3_bucket, tmp_path,
                                                                       monkeypatch):
    from mlflow.tracking import MlflowClient

    from tests.engine.toy_steps import ToyConfig, ToySection, runs, toy_steps
    from vlv.run import RunOptions, run_pipeline

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    counter = tmp_path / "counter"
    counter.mkdir()
    config = ToyConfig(alpha=ToySection(counter_dir=str(counter)), beta=ToySection(value=10, counter_dir=str(counter)),
                       gamma=ToySection(value=100, counter_dir=str(counter)))
    uri = f"s3://{s3_bucket}/runs"
    first = run_pipeline(RunOptions(config=config, store_uri=uri, steps=toy_steps()))
    assert first.executed() == ["alpha", "beta", "gamma"]
    store = RunStore(uri)
    gamma = store.output("gamma", first.steps[2].key)
    assert gamma.read_text("value.txt") == "111" and gamma.uri == first.steps[2].output_uri
    client = MlflowClient(first.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(first.steps[1].mlflow_run_id)}
    assert {"manifest.json", "table.csv"} <= artifacts  # small outputs reach MLflow from the object store too
    again = run_pipeline(RunOptions(config=config, store_uri=uri, steps=toy_steps(), force=("beta",)))
    assert again.executed() == ["beta"]
    assert [runs(counter, s) for s in ("alpha", "beta", "gamma")] == [1, 2, 1]
    assert len(store._commit_numbers("beta", first.steps[1].key)) == 2


def test_weights_given_as_a_store_uri_are_fetched_once_per_node_and_load(s3_bucket, tmp_path, monkeypatch):
    import torch

    from vlv.models.aesthetic import load_predictor, random_predictor

    monkeypatch.setenv("VLV_NODE_CACHE", str(tmp_path / "node_cache"))
    predictor = random_predictor("v2-mlp", seed=3)
    local = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(predictor.state_dict(), local)
    uri = f"s3://{s3_bucket}/models/sac+logos+ava1-l14-linearMSE.pth"
    fs, path = filesystem(uri)
    fs.put_file(str(local), path)
    loaded = load_predictor("v2-mlp", uri)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), predictor.state_dict().values()))
    cached = list((tmp_path / "node_cache").rglob("sac+logos+ava1-l14-linearMSE.pth"))
    assert len(cached) == 1
    fs.rm_file(path)  # the second load on this node is served by the cache
    load_predictor("v2-mlp", uri)
