"""The object-store protocols on real servers, S3 (moto) and GCS (fake-gcs-server): attempts and commits, the
lease, --force. Each test runs once per store (`bucket_uri`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from vlv.engine.lease import LockLostError, StoreLockedError
from vlv.engine.manifest import Manifest, verify_files
from vlv.engine.storage import StoreAccessError, create_exclusive, describe_store_error, filesystem
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


def test_commit_publishes_files_uploaded_and_written_in_place(bucket_uri):
    store = RunStore(f"{bucket_uri}/runs")
    assert store.output("alpha", "k1") is None and not store.is_published("alpha", "k1")
    _produce(store, "alpha", "k1", "one", big=b"\x00" * 1000)
    output = store.output("alpha", "k1")
    assert output is not None and output.uri.startswith(f"{bucket_uri}/runs/steps/alpha/k1/attempts/")
    assert output.read_text("value.txt") == "one"
    assert {e.path: e.size for e in output.manifest.files} == {"value.txt": 3, "shards/0.bin": 1000}
    assert verify_files(output.uri, output.manifest) == []
    assert output.local_path("value.txt").read_text() == "one"  # fetched once into the node cache
    assert store.published_keys("alpha") == ["k1"]


def test_force_keeps_the_old_output_readable_until_the_new_one_commits_then_collects_garbage(bucket_uri):
    store = RunStore(f"{bucket_uri}/runs")
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


def test_a_resumable_attempt_continues_the_unfinished_one(bucket_uri):
    store = RunStore(f"{bucket_uri}/runs")
    crashed = store.begin_attempt("download", "k", resume=True)
    fs, path = filesystem(f"{crashed.data_uri}/shards/00000.tar")
    fs.pipe_file(path, b"finished shard")
    again = store.begin_attempt("download", "k", resume=True)
    assert again.attempt_id == crashed.attempt_id and again.data_uri == crashed.data_uri
    assert store.begin_attempt("download", "k", resume=False).attempt_id != crashed.attempt_id


def test_two_commits_racing_for_one_number_let_exactly_one_win(bucket_uri):
    store = RunStore(f"{bucket_uri}/runs")
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


def test_a_reader_sees_what_another_process_committed_after_it_listed_the_key(bucket_uri):
    store = RunStore(f"{bucket_uri}/runs")
    _produce(store, "alpha", "k", "old")
    assert store.output("alpha", "k").read_text("value.txt") == "old"
    assert len(store._attempt_ids("alpha", "k")) == 1  # this process listed the key's attempts (as a driver does)
    script = ("import sys; from vlv.engine.store import RunStore; from vlv.engine.manifest import Manifest; "
              "s = RunStore(sys.argv[1]); a = s.begin_attempt('alpha', 'k', resume=False); "
              "(a.local_dir / 'value.txt').write_text('new'); "
              "s.commit(a, Manifest('alpha', 'k', '1', {}, {}, s.attempt_files(a), {}))")
    subprocess.run([sys.executable, "-c", script, store.uri], check=True, env=os.environ.copy())  # e.g. a worker
    output = store.output("alpha", "k")
    assert output.local_path("value.txt").read_text() == "new"  # no stale listing hides the new attempt
    with output.open("value.txt") as handle:
        assert handle.read() == b"new"
    assert verify_files(output.uri, output.manifest) == []


def test_exclusive_create_on_the_object_store_and_locally(bucket_uri, tmp_path):
    for uri in (f"{bucket_uri}/x/one.json", str(tmp_path / "one.json")):
        fs, path = filesystem(uri)
        assert create_exclusive(fs, path, b"first") is True
        assert create_exclusive(fs, path, b"second") is False
        assert fs.cat_file(path) == b"first"
    fs, path = filesystem(f"{bucket_uri}/x/one.json")  # a retried create whose first answer was lost: it is ours
    assert create_exclusive(fs, path, b"first") is True


def test_verify_reads_every_output_through_the_store_and_names_a_missing_or_corrupt_file(bucket_uri, capsys):
    from vlv import cli

    uri = f"{bucket_uri}/runs"
    store = RunStore(uri)
    _produce(store, "alpha", "k", "one", big=b"\x01" * 300)
    _produce(store, "beta", "k", "two")
    assert cli.main(["verify", "--store", uri]) == 0
    assert "2 published outputs intact" in capsys.readouterr().out
    alpha, beta = store.output("alpha", "k"), store.output("beta", "k")
    store.fs.rm_file(store.fs._strip_protocol(alpha.path("shards/0.bin")))  # a manifest naming a missing file
    store.fs.pipe_file(store.fs._strip_protocol(beta.path("value.txt")), b"TWO")  # same size, other bytes
    assert verify_files(alpha.uri, alpha.manifest) == [f"{alpha.path('shards/0.bin')}: missing"]
    assert cli.main(["verify", "--store", uri]) == 1
    out = capsys.readouterr().out
    assert f"{alpha.path('shards/0.bin')}: missing" in out
    assert f"{beta.path('value.txt')}: same size but sha256 differs" in out and "--force alpha,beta" in out


def test_two_drivers_racing_for_one_lease_epoch_let_exactly_one_hold_it(bucket_uri):
    store = RunStore(f"{bucket_uri}/runs")
    first, second = store._lease("alpha", "k"), store._lease("alpha", "k")
    held = first.acquire("run-one", ttl_s=60)
    listed, calls = second.epochs, []

    def listed_just_before_run_one_created_its_epoch() -> list[int]:
        calls.append(1)
        return [] if len(calls) == 1 else listed()

    second.epochs = listed_just_before_run_one_created_its_epoch
    with pytest.raises(StoreLockedError, match=r"run-one \(pid \d+"):
        second.acquire("run-two", ttl_s=60)  # its create of epoch 1 is refused; it then finds run-one holding it
    first.check(held.token)
    assert first.epochs() == [1]


def test_a_missing_bucket_is_named_with_the_command_that_creates_it(bucket_uri):
    scheme = bucket_uri.split("://")[0]
    with pytest.raises(StoreAccessError) as err:
        RunStore(f"{scheme}://no-such-bucket-{uuid.uuid4().hex[:8]}/runs").check_access()
    create = "gcloud storage buckets create gs://<bucket>" if scheme == "gs" else "aws s3 mb s3://<bucket>"
    assert "the bucket does not exist" in str(err.value) and create in str(err.value)


def test_gcs_store_errors_name_the_gcs_settings(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")
    unreachable = describe_store_error("gs://b/runs", OSError("Cannot connect to host 127.0.0.1:4443 ssl:default"))
    assert "the object store at http://127.0.0.1:4443 does not answer" in unreachable
    assert "STORAGE_EMULATOR_HOST" in unreachable and "AWS_" not in unreachable
    refused = describe_store_error("gs://b/runs", OSError("Forbidden: b/runs\nAnonymous caller does not have ..."))
    assert "refused the credentials" in refused and "GOOGLE_APPLICATION_CREDENTIALS" in refused
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    assert "AWS_ENDPOINT_URL" in describe_store_error("s3://b/runs", OSError("Could not connect to the endpoint URL"))


def test_second_driver_is_refused_naming_the_first(bucket_uri):
    store = RunStore(f"{bucket_uri}/runs")
    with store.lock("alpha", "k", owner="run-one") as token:
        with pytest.raises(StoreLockedError, match=r"run-one \(pid \d+"):
            with store.lock("alpha", "k", owner="run-two"):
                pass
        store.check_lock("alpha", "k", token)  # still ours
    with store.lock("alpha", "k", owner="run-three"):  # released: the next run takes it at once
        pass


def test_a_lapsed_lease_is_taken_over_and_fences_the_old_holder(bucket_uri, monkeypatch):
    monkeypatch.setenv("VLV_LEASE_TTL_S", "1.5")
    store = RunStore(f"{bucket_uri}/runs")
    lease = store._lease("alpha", "k")
    stalled = lease.acquire("stalled-run", ttl_s=1.5)  # never renewed: a driver frozen or on a lost machine
    stalled.host = "another-host"  # not this machine, so only the expiry can free it
    fs = store.fs
    fs.pipe_file(lease._path(1), json.dumps(stalled.__dict__).encode())
    with pytest.raises(StoreLockedError, match="stalled-run"):
        lease.acquire("new-run", ttl_s=1.5)
    time.sleep(3)  # > ttl + 1 s: S3 stamps whole seconds, so a lease may look up to 1 s younger
    fresh = lease.acquire("new-run", ttl_s=30)
    with pytest.raises(LockLostError, match="no longer holds"):
        lease.check(stalled.token)
    lease.check(fresh.token)


def test_a_dead_driver_on_this_host_does_not_block_until_expiry(bucket_uri):
    store = RunStore(f"{bucket_uri}/runs")
    script = ("import sys, os; from vlv.engine.store import RunStore; s = RunStore(sys.argv[1]); "
              "s._lease('alpha', 'k').acquire('killed-run', ttl_s=600); os._exit(0)")
    subprocess.run([sys.executable, "-c", script, store.uri], check=True, env=os.environ.copy())
    with store.lock("alpha", "k", owner="next-run"):  # the holder's pid is gone: taken over without waiting
        pass


def test_the_lease_is_renewed_while_the_step_runs(bucket_uri, monkeypatch):
    monkeypatch.setenv("VLV_LEASE_TTL_S", "2")
    store = RunStore(f"{bucket_uri}/runs")
    with store.lock("alpha", "k", owner="long-run") as token:
        time.sleep(4.5)  # > 2 x ttl: only renewals keep it
        store.check_lock("alpha", "k", token)
        with pytest.raises(StoreLockedError):
            with store.lock("alpha", "k", owner="intruder"):
                pass


def test_the_runner_on_an_object_store_caches_forces_and_logs_artifacts(ray_session, bucket_uri, tmp_path,
                                                                       monkeypatch):
    from mlflow.tracking import MlflowClient

    from vlv.run import RunOptions, run_pipeline
    from vlv.testing.toy_steps import ToyConfig, ToySection, runs, toy_steps

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    counter = tmp_path / "counter"
    counter.mkdir()
    config = ToyConfig(alpha=ToySection(counter_dir=str(counter)), beta=ToySection(value=10, counter_dir=str(counter)),
                       gamma=ToySection(value=100, counter_dir=str(counter)))
    uri = f"{bucket_uri}/runs"
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


def test_pyarrow_reaches_the_same_server_as_fsspec(bucket_uri):
    """Ray Data and Ray Train use pyarrow's own S3 and GCS filesystems: they must see what fsspec wrote."""
    import pyarrow.fs as pafs

    from vlv.engine.storage import arrow_filesystem

    fs, root = filesystem(f"{bucket_uri}/shards")
    fs.pipe_file(f"{root}/00000.tar", b"tar bytes")
    arrow, arrow_root = arrow_filesystem(f"{bucket_uri}/shards")
    infos = arrow.get_file_info(pafs.FileSelector(arrow_root, recursive=True))
    assert [(info.base_name, info.size) for info in infos] == [("00000.tar", 9)]
    with arrow.open_input_stream(f"{arrow_root}/00000.tar") as handle:
        assert handle.read() == b"tar bytes"
    with arrow.open_output_stream(f"{arrow_root}/checkpoint/state.bin") as handle:  # as Ray Train saves one
        handle.write(b"state")
    assert fs.cat_file(f"{root}/checkpoint/state.bin") == b"state"


def test_weights_given_as_a_store_uri_are_fetched_once_per_node_and_load(bucket_uri, tmp_path, monkeypatch):
    import torch

    from vlv.models.aesthetic import load_predictor, random_predictor

    monkeypatch.setenv("VLV_NODE_CACHE", str(tmp_path / "node_cache"))
    predictor = random_predictor("v2-mlp", seed=3)
    local = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(predictor.state_dict(), local)
    uri = f"{bucket_uri}/models/sac+logos+ava1-l14-linearMSE.pth"
    fs, path = filesystem(uri)
    fs.put_file(str(local), path)
    loaded = load_predictor("v2-mlp", uri)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), predictor.state_dict().values()))
    cached = list((tmp_path / "node_cache").rglob("sac+logos+ava1-l14-linearMSE.pth"))
    assert len(cached) == 1
    fs.rm_file(path)  # the second load on this node is served by the cache
    load_predictor("v2-mlp", uri)
