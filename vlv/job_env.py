"""Where the pipeline driver runs, and which local paths would not outlive it.

`ray job submit --working-dir .` runs the entrypoint inside Ray's temporary copy of the working dir
(`<ray temp>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>/`), which Ray deletes when it trims
its cache or the cluster goes away. A relative store (the default `./vlv_runs`) or a relative `sqlite:///`
tracking URI would put a run's outputs and its MLflow history in there, silently lost: `check_job_paths`
refuses them before any work starts, naming the fix.

Also here: the environment that keeps an embedded local Ray on the loopback interface.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

# Ray's JobSupervisor sets this for every job entrypoint (ray/dashboard/modules/job/job_supervisor.py,
# `_get_driver_env_vars`); it holds the job's runtime_env (working_dir, env_vars) as JSON.
RAY_JOB_ENV_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Ray unpacks a job's working_dir under <session dir>/runtime_resources/working_dir_files/.
RAY_RUNTIME_RESOURCES_DIR = "runtime_resources"

# Tracking URIs without "://" that name a service, not a folder.
_BARE_REMOTE_TRACKING = frozenset({"databricks", "databricks-uc", "uc"})

_FIX = ("pass an absolute --store (e.g. --store /data/vlv_runs on a single machine, --store s3://bucket/vlv_runs "
        "on a cluster) and set MLFLOW_TRACKING_URI to an MLflow server (infra/local/mlflow_server.sh starts one), "
        "e.g. --runtime-env-json '{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"http://127.0.0.1:5000\"}}'; on one "
        "machine, MLflow may instead stay in the store's default sqlite:///<store>/mlflow.db")


@dataclass(frozen=True)
class JobEnvironment:
    """How this process was started, as far as the paths it may write to are concerned."""

    is_ray_job: bool  # a `ray job submit` entrypoint (or a process it started)
    cwd: Path
    cwd_is_ray_temporary: bool  # cwd is inside Ray's runtime_resources (an unpacked working_dir)


def detect_job_environment(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> JobEnvironment:
    env = os.environ if environ is None else environ
    here = Path(os.getcwd() if cwd is None else cwd).absolute()
    in_runtime_resources = RAY_RUNTIME_RESOURCES_DIR in here.parts
    return JobEnvironment(is_ray_job=RAY_JOB_ENV_VAR in env or in_runtime_resources, cwd=here,
                          cwd_is_ray_temporary=in_runtime_resources)


def check_job_paths(store_uri: str, environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
    """Raise ValueError if, under `ray job submit`, the store or the MLflow store would live in Ray's temp copy.

    The tracking URI checked is MLFLOW_TRACKING_URI; without it the runner puts a SQLite database inside the
    store, which the store check covers.
    """
    env = os.environ if environ is None else environ
    job = detect_job_environment(env, cwd)
    if not job.is_ray_job:
        return
    store_path = _local_path(store_uri)
    if store_path is not None and _is_lost(store_path, job):
        raise ValueError(f"running as a Ray job (ray job submit), the store '{store_uri}' {_where(store_path, job)}: "
                         f"the run's outputs would be lost. Fix: {_FIX}")
    tracking_uri = env.get("MLFLOW_TRACKING_URI", "")
    tracking_path = _tracking_db_path(tracking_uri) if tracking_uri else None
    if tracking_path is not None and _is_lost(tracking_path, job):
        raise ValueError(f"running as a Ray job (ray job submit), MLFLOW_TRACKING_URI='{tracking_uri}' "
                         f"{_where(tracking_path, job)}: the run history would be lost. Fix: {_FIX}")


def embedded_ray_env_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that will start an embedded Ray (no RAY_ADDRESS): everything on 127.0.0.1.

    Ray replaces a loopback node IP by the machine's routable address (`services.resolve_ip_for_localhost`), so
    an embedded Ray's GCS, raylet and dashboard agent listen on the network. With
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray treats the node as single-machine and uses 127.0.0.1. It is read
    when `ray` is imported, so this must be applied first; and never when joining a cluster, where the node
    IP must be the routable one.
    """
    env = os.environ if environ is None else environ
    if env.get("RAY_ADDRESS"):
        return {}
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _local_path(uri: str) -> Path | None:
    """The local path a store URI names, or None for a remote filesystem (s3://, gs://, ...)."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    if "://" in uri:
        return None
    return Path(uri)


def _tracking_db_path(uri: str) -> Path | None:
    """The local file or folder an MLflow tracking URI writes to, or None for a server or database service."""
    if uri.startswith("sqlite:///"):
        # sqlite:///relative.db is relative to the cwd; sqlite:////abs/path.db is absolute.
        return Path(uri.removeprefix("sqlite:///"))
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:"))
    if ":" in uri.split("/", 1)[0] or uri.split("/", 1)[0] in _BARE_REMOTE_TRACKING:
        return None  # http(s)://, postgresql://, mysql://, databricks, ...
    return Path(uri)  # a bare path: MLflow's file store


def _resolved(path: Path, job: JobEnvironment) -> Path:
    return Path(os.path.normpath(path if path.is_absolute() else job.cwd / path))


def _is_lost(path: Path, job: JobEnvironment) -> bool:
    """Relative paths follow the job's cwd, which Ray chooses; paths in Ray's runtime resources get deleted."""
    return not path.is_absolute() or RAY_RUNTIME_RESOURCES_DIR in _resolved(path, job).parts


def _where(path: Path, job: JobEnvironment) -> str:
    resolved = _resolved(path, job)
    if RAY_RUNTIME_RESOURCES_DIR in resolved.parts:
        return f"resolves to {resolved}, inside Ray's temporary copy of the working dir, which Ray deletes"
    return f"is relative, so it resolves against the job's cwd ({job.cwd}), a folder Ray chooses: here {resolved}"
