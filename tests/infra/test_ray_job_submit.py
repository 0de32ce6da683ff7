"""`ray job submit` of the tiny pipeline against infra/local's Ray head and MLflow server, as a user runs it.

The services are the user-facing scripts, started on free ports with their own state folder and stopped by
PID. One end-to-end test (a few minutes: it runs in CI), plus a fast check that a store which would live in
Ray's temporary copy of the working dir is refused before any work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines import full_run
from vlv.job_env import RAY_JOB_ENV_VAR
from vlv.pipeline import step_names
from vlv.testing.fake_secrets import FAKE_SECRETS
from vlv.testing.sockets import LOOPBACK, listening_addresses

REPO = Path(__file__).resolve().parents[2]
RAY_HEAD = REPO / "infra" / "local" / "ray_head.sh"
MLFLOW_SERVER = REPO / "infra" / "local" / "mlflow_server.sh"
RAY = REPO / ".venv" / "bin" / "ray"
JOB_DEADLINE_S = 1800  # a bound against a hung job, not a speed requirement (the job takes a few minutes)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class LocalServices:
    state_dir: Path
    env: dict[str, str]  # what the scripts and the `ray` client run with
    job_address: str
    tracking_uri: str


def run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def recorded_pid(services: LocalServices, name: str) -> int | None:
    pid_file = services.state_dir / f"{name}.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


def is_running(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def local_services():
    # /tmp, not pytest's deep tmp_path: Ray's unix socket paths under the temp dir must stay short.
    state_dir = Path(tempfile.mkdtemp(prefix="vlvjob", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "VLV_STORE")}
    ray_port, mlflow_port = free_port(), free_port()
    env.update({
        "VLV_LOCAL_STATE_DIR": str(state_dir), "VLV_MLFLOW_STORE": str(state_dir / "mlflow_store"),
        "VLV_MLFLOW_PORT": str(mlflow_port), "VLV_RAY_DASHBOARD_PORT": str(ray_port),
        "VLV_RAY_GCS_PORT": str(free_port()), "VLV_RAY_CLIENT_PORT": str(free_port()),
        "VLV_RAY_AGENT_PORT": str(free_port()), "RAY_AUTH_MODE": "token",
    })
    services = LocalServices(state_dir, env, f"http://127.0.0.1:{ray_port}", f"http://127.0.0.1:{mlflow_port}")
    try:
        for script in (MLFLOW_SERVER, RAY_HEAD):
            started = run([str(script), "start"], env, timeout=600)
            assert started.returncode == 0, f"{script.name} start failed:\n{started.stdout}\n{started.stderr}"
        yield services
    finally:
        for script in (RAY_HEAD, MLFLOW_SERVER):
            run([str(script), "stop"], env, timeout=120)
        shutil.rmtree(state_dir, ignore_errors=True)


def job_status(services: LocalServices, job_id: str) -> str:
    """The job's status from the job REST API (what `ray job status` reads), with the token Ray uses."""
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    request = urllib.request.Request(f"{services.job_address}/api/jobs/{job_id}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["status"]


DATA_STEPS = ["prepare_metadata", "download", "aesthetic_filter", "ingest_captions"]


@pytest.mark.parametrize("steps", [
    pytest.param(DATA_STEPS, id="data-steps"),  # the default suite: the job path end to end, in minutes
    pytest.param(None, id="all-steps", marks=pytest.mark.slow),  # + training (about 10 more minutes)
])
def test_tiny_pipeline_as_a_ray_job(local_services, tmp_path, steps):
    services = local_services
    selection = ["--steps", ",".join(steps)] if steps else []
    steps = steps or step_names()
    store = tmp_path / "store"  # absolute: the job's cwd is Ray's temporary copy of the repository

    # Every socket either service listens on (dashboard, GCS, client server, agents, raylet, MLflow) is loopback.
    for name in ("ray_head", "mlflow_server"):
        addresses = listening_addresses(recorded_pid(services, name))
        assert addresses and {ip for ip, _ in addresses} <= LOOPBACK, f"{name} listens beyond loopback: {addresses}"

    # Token auth is on: a client without RAY_AUTH_MODE=token is turned away, with it the job API answers.
    no_token_env = {k: v for k, v in services.env.items() if k != "RAY_AUTH_MODE"}
    refused = run([str(RAY), "job", "list", "--address", services.job_address], no_token_env, timeout=120)
    assert refused.returncode != 0 and "Authentication" in refused.stdout + refused.stderr

    job_id = f"vlv-test-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": services.tracking_uri}}
    submitted = run([str(RAY), "job", "submit", "--address", services.job_address, "--submission-id", job_id,
                     "--no-wait", "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--",
                     "python", "pipelines/full_run.py", "--preset", "tiny", "--store", str(store),
                     "--set", f"prepare_metadata.tiny_port={free_port()}", *selection], services.env, timeout=300)
    assert submitted.returncode == 0, submitted.stderr
    deadline = time.monotonic() + JOB_DEADLINE_S
    status = job_status(services, job_id)
    while status in ("PENDING", "RUNNING") and time.monotonic() < deadline:
        time.sleep(5)
        status = job_status(services, job_id)
    logs = run([str(RAY), "job", "logs", job_id, "--address", services.job_address], services.env, timeout=120)
    assert status == "SUCCEEDED", f"job {job_id} ended {status}; log tail:\n{logs.stdout[-4000:]}"

    # Progress shows in the job log.
    for step in steps:
        assert re.search(rf"running step {step} \(key", logs.stdout), step  # the step's worker says it started
        assert re.search(rf"step {step}\s+done in", logs.stdout), step
    assert "joining the Ray cluster" in logs.stdout
    # The job ran with the fake credentials of tests/conftest.py in its environment: none reaches its log.
    assert not [name for name, value in FAKE_SECRETS.items() if value in logs.stdout]

    # Outputs land in the store, not in the job's temporary working dir.
    published = {p.parts[-3]: p.parent for p in store.glob("steps/*/*/manifest.json")}
    assert set(published) == set(steps)
    assert any((published["download"] / "shards").glob("*.tar"))
    assert (published["ingest_captions"] / "captions.parquet").is_file()
    assert not (store / "mlflow.db").exists(), "tracking went to the server, not to a SQLite file in the store"
    job_copies = services.state_dir / "ray" / "session_latest" / "runtime_resources" / "working_dir_files"
    assert any(job_copies.glob("*/pipelines/full_run.py")), "the job ran from Ray's copy of the working dir"
    assert not list(job_copies.rglob("manifest.json")) and not list(job_copies.rglob("mlflow.db"))

    # Runs are in the MLflow server: the parent and one child per step, with proxied artifacts.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(services.tracking_uri)
    experiment = client.get_experiment_by_name("vlv")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("vlv.pipeline") == "full_run"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = {r.data.tags["vlv.step"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert set(children) == set(steps)
    for step, child in children.items():
        assert child.data.tags["vlv.status"] == "executed"
        assert child.data.tags["vlv.output_uri"] == str(published[step])
        assert "manifest.json" in {a.path for a in client.list_artifacts(child.info.run_id)}
    assert children["download"].data.metrics["images_ok"] > 0
    assert any((services.state_dir / "mlflow_store" / "mlflow-artifacts").rglob("manifest.json"))

    # Both services stop by PID, and only their own processes go.
    pids = {name: recorded_pid(services, name) for name in ("ray_head", "mlflow_server")}
    assert all(is_running(pid) for pid in pids.values()), pids
    for script in (RAY_HEAD, MLFLOW_SERVER):
        assert run([str(script), "stop"], services.env, timeout=120).returncode == 0
    assert not any(is_running(pid) for pid in pids.values()), pids
    assert run([str(RAY_HEAD), "status"], services.env, timeout=60).returncode == 3


def test_a_store_inside_the_jobs_temporary_working_dir_is_refused(tmp_path, monkeypatch, capsys):
    job_cwd = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123"
    job_cwd.mkdir(parents=True)
    monkeypatch.chdir(job_cwd)
    monkeypatch.setenv(RAY_JOB_ENV_VAR, json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}}))
    monkeypatch.delenv("VLV_STORE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    assert full_run.main(["--preset", "tiny"]) == 2  # the default store, ./vlv_runs
    message = capsys.readouterr().err
    assert "Ray job" in message and str(job_cwd / "vlv_runs") in message
    assert "absolute --store" in message and "MLFLOW_TRACKING_URI" in message
    assert not (job_cwd / "vlv_runs").exists(), "refused before anything was written"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert full_run.main(["--preset", "tiny", "--store", str(tmp_path / "store"), "--dry-run"]) == 2
    assert "MLFLOW_TRACKING_URI='sqlite:///mlflow.db'" in capsys.readouterr().err
