"""Which store and tracking paths are refused under `ray job submit` (they would live in Ray's temp copy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlv.job_env import (
    RAY_JOB_ENV_VAR,
    check_job_paths,
    detect_job_environment,
    embedded_ray_env_defaults,
)

JOB_CWD = Path("/tmp/ray/session_2026-01-01_00-00-00_1_1/runtime_resources/working_dir_files/_ray_pkg_abc")
JOB_ENV = {RAY_JOB_ENV_VAR: '{"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}}'}


def test_detects_a_job_by_env_var_or_by_cwd():
    assert detect_job_environment({}, Path("/home/me/vlv")).is_ray_job is False
    by_env = detect_job_environment(JOB_ENV, Path("/home/me/vlv"))
    assert by_env.is_ray_job and not by_env.cwd_is_ray_temporary
    by_cwd = detect_job_environment({}, JOB_CWD)
    assert by_cwd.is_ray_job and by_cwd.cwd_is_ray_temporary


@pytest.mark.parametrize("store", ["./vlv_runs", "vlv_runs", "file://vlv_runs", str(JOB_CWD / "vlv_runs")])
def test_refuses_a_store_inside_the_job_copy(store):
    with pytest.raises(ValueError) as err:
        check_job_paths(store, JOB_ENV, JOB_CWD)
    message = str(err.value)
    assert "Ray job" in message and "absolute --store" in message and "MLFLOW_TRACKING_URI" in message
    assert str(JOB_CWD / "vlv_runs") in message


def test_refuses_a_relative_store_even_without_a_working_dir_copy():
    with pytest.raises(ValueError, match="is relative"):
        check_job_paths("./vlv_runs", JOB_ENV, Path("/home/me"))


@pytest.mark.parametrize("store", ["/data/vlv_runs", "file:///data/vlv_runs", "s3://bucket/vlv_runs",
                                   "gs://bucket/runs"])
def test_accepts_absolute_and_remote_stores_in_a_job(store):
    check_job_paths(store, JOB_ENV, JOB_CWD)


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "sqlite:///./runs/mlflow.db", "./mlruns", "file:./mlruns",
                                 f"sqlite:///{JOB_CWD}/mlflow.db"])
def test_refuses_a_tracking_store_inside_the_job_copy(uri):
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI"):
        check_job_paths("/data/vlv_runs", {**JOB_ENV, "MLFLOW_TRACKING_URI": uri}, JOB_CWD)


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.com", "databricks",
                                 "postgresql://u@db/mlflow", "sqlite:////data/mlflow.db"])
def test_accepts_servers_and_absolute_sqlite_in_a_job(uri):
    check_job_paths("/data/vlv_runs", {**JOB_ENV, "MLFLOW_TRACKING_URI": uri}, JOB_CWD)


def test_outside_a_job_relative_paths_are_fine():
    check_job_paths("./vlv_runs", {"MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}, Path("/home/me/vlv"))


def test_embedded_ray_is_kept_on_loopback_only_without_a_cluster_address():
    assert embedded_ray_env_defaults({}) == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    assert embedded_ray_env_defaults({"RAY_ADDRESS": "127.0.0.1:6380"}) == {}


PROBE = """
import psutil, ray
ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False)
ray.get(ray.remote(lambda: 1).remote())
tree = [psutil.Process(), *psutil.Process().children(recursive=True)]
listening = set()
for proc in tree:
    try:
        listening |= {c.laddr.ip for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    except psutil.Error:
        pass
print("LISTEN", " ".join(sorted(listening)))
ray.shutdown()
"""


@pytest.mark.slow
def test_embedded_ray_with_these_defaults_listens_on_loopback_only():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(embedded_ray_env_defaults(env))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600)
    line = next(x for x in out.stdout.splitlines() if x.startswith("LISTEN"))
    addresses = set(line.split()[1:])
    assert addresses, out.stderr[-2000:]
    assert addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}, addresses
