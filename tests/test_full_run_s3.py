"""The whole tiny pipeline on an object store (moto's S3 server on 127.0.0.1): the same keys and files as on a
local store, byte for byte (training included: it is deterministic); a second invocation is fully cached;
`vlv verify` checks every file through the store."""

from __future__ import annotations

import logging
import os

import pytest

from pipelines import full_run
from vlv import cli
from vlv.engine.store import RunStore
from vlv.pipeline import step_names

# Files whose bytes embed which run made them (run ids, wall-clock times), so they differ between any two runs.
RUN_SPECIFIC = {("report", "report.html")}


@pytest.fixture(scope="session")
def s3_tiny_store(ray_session, s3_server, tmp_path_factory) -> str:
    """The tiny pipeline on s3://<bucket>/runs, tracked in a SQLite file (an object store holds no database)."""
    s3_server.create_bucket("vlv-e2e")
    root = tmp_path_factory.mktemp("s3_run")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    logging.getLogger().setLevel(logging.INFO)
    try:
        assert full_run.main(["--preset", "tiny", "--store", "s3://vlv-e2e/runs"]) == 0
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return "s3://vlv-e2e/runs"


def test_every_step_is_committed_on_the_object_store_and_equals_the_local_run(s3_tiny_store, tiny_store):
    remote, local = RunStore(s3_tiny_store), RunStore(str(tiny_store))
    for step in step_names():
        keys = remote.published_keys(step)
        assert keys == local.published_keys(step), step  # same config, same keys, whatever the store
        remote_files = {e.path: e.sha256 for e in remote.read_manifest(step, keys[0]).files}
        local_files = {e.path: e.sha256 for e in local.read_manifest(step, keys[0]).files}
        assert sorted(remote_files) == sorted(local_files), step
        differing = sorted(p for p in remote_files if remote_files[p] != local_files[p]
                           and (step, p) not in RUN_SPECIFIC)
        assert differing == [], f"{step}: {differing}"


def test_a_second_invocation_is_fully_cached_and_verify_reads_through_the_store(s3_tiny_store, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'rerun.db'}")
    capsys.readouterr()
    assert full_run.main(["--preset", "tiny", "--store", s3_tiny_store]) == 0
    printed = capsys.readouterr().out
    assert [line.split()[1] for line in printed.splitlines()[1:len(step_names()) + 1]] == \
        ["cached"] * len(step_names())
    assert cli.main(["verify", "--store", s3_tiny_store]) == 0
    assert f"{len(step_names())} published outputs intact" in capsys.readouterr().out


def test_verify_finds_a_damaged_object_and_names_it(s3_tiny_store, capsys):
    store = RunStore(s3_tiny_store)
    output = store.output("ingest_captions", store.published_keys("ingest_captions")[0])
    path = store.fs._strip_protocol(output.path("quarantine_summary.csv"))
    original = store.fs.cat_file(path)
    try:
        store.fs.pipe_file(path, original[:-1] + (b"X" if original[-1:] != b"X" else b"Y"))
        assert cli.main(["verify", "--store", s3_tiny_store]) == 1
        out = capsys.readouterr().out
        assert "quarantine_summary.csv: same size but sha256 differs" in out and "--force ingest_captions" in out
    finally:
        store.fs.pipe_file(path, original)
