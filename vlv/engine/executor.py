"""Where step declarations become Ray work (our thin replacement for Ray Workflows), with `vlv.engine.pools`.

- `connect_ray` joins a cluster (RAY_ADDRESS, as `ray job submit` sets) or starts an embedded local Ray.
- `submit_step` runs one step as a Ray task with the resources the step declares and returns its manifest.
- `execute_step` is what that task does: stage, run, checksum, publish. It is plain Python, so tests and
  debuggers can call it without Ray.
- Inside a step, its maps run on the worker pools it declares (`Step.worker_pools`) through `vlv.engine.pools`:
  actor pools and task maps, started with the declared CPUs and GPUs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from vlv.config_tree import to_dict
from vlv.engine.manifest import FileEntry, Manifest
from vlv.engine.step import MetricLogger, Resources, Step, StepContext, StepOutput
from vlv.engine.storage import filesystem
from vlv.engine.store import Attempt, RunStore
from vlv.logs import LOG_FORMAT, configure_logging, filter_worker_output
from vlv.runtime_env import worker_env_vars
from vlv.secrets import install_log_redaction
from vlv.tracking import MlflowMetricLogger

log = logging.getLogger("vlv.executor")


@dataclass(frozen=True)
class StepRequest:
    """Everything a Ray task needs to run one step (picklable, no live handles)."""

    step: Step
    key: str
    preset: str
    section: Any  # the step's typed config section (its dataclass); the manifest records it as a dict
    upstream_keys: dict[str, str]
    inputs: dict[str, StepOutput]
    store_uri: str
    tracking_uri: str | None
    mlflow_run_id: str | None
    on_cluster: bool
    # The driver's claim on this step key (RunStore.lock); checked just before publishing, None = unlocked.
    lock_token: str | None = None
    forced: bool = False  # --force / --from: the driver already discarded partial work; this run starts afresh


def connect_ray() -> bool:
    """Join the cluster named by RAY_ADDRESS, or start an embedded local Ray. Returns True on a cluster."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        filter_worker_output()
        return bool(address)
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": worker_env_vars()})
        filter_worker_output()
        return True
    log.info("no RAY_ADDRESS: starting an embedded local Ray")
    for attempt in (1, 2):
        try:
            # address="local": always a fresh Ray of our own. With no address Ray attaches to whatever
            # /tmp/ray/ray_current_cluster names: another user's `ray start`, or a dead cluster's stale file.
            ray.init(address="local", include_dashboard=False, log_to_driver=True, configure_logging=False)
            filter_worker_output()
            return False
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception when its node misses the start limit
            if "timed out during startup" not in str(err):
                raise
            ray.shutdown()
            if attempt == 2:
                raise RuntimeError("the embedded Ray did not start: its raylet missed Ray's fixed 30 s start limit "
                                   "twice (is the machine overloaded?); rerun when it is quieter, or start a Ray "
                                   "head (infra/local/ray_head.sh start) and set RAY_ADDRESS") from None
            log.warning("the embedded Ray missed its 30 s start limit (machine busy); trying once more")
    return False


def step_runtime_env() -> dict[str, Any] | None:
    """The runtime env of step tasks on an embedded Ray: RAY_ADDRESS naming it, inherited by every task and actor
    the step starts. Ray's own helpers that look up "the" running Ray (the state API in Ray Train's
    placement-group cleaner) would otherwise find several on a machine that runs more than one and fail."""
    import ray

    if os.environ.get("RAY_ADDRESS") or not ray.is_initialized():
        return None
    return {"env_vars": {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}}


def submit_step(request: StepRequest, resources: Resources) -> Manifest:
    """Run the step as a Ray task with the declared resources; block until published.

    A task lost with its node or worker process is rerun by Ray (`resources.max_retries`); the rerun begins a
    new attempt or, for a resumable step, continues the unfinished one in the store.
    """
    import ray

    options: dict[str, Any] = dict(num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
                                   max_retries=resources.max_retries, retry_exceptions=False,
                                   name=f"vlv:{request.step.name}")
    runtime_env = step_runtime_env()
    if runtime_env:
        options["runtime_env"] = runtime_env
    task = ray.remote(_step_task).options(**options)
    return ray.get(task.remote(request))


def _step_task(request: StepRequest) -> Manifest:
    configure_logging(force=True)  # Ray worker processes: one format, credentials redacted
    return execute_step(request)


def execute_step(request: StepRequest) -> Manifest:
    """Stage, run and publish one step; the output is visible only if `run` returned normally."""
    step = request.step
    store = RunStore(request.store_uri)
    attempt = store.begin_attempt(step.name, request.key, resume=step.resumable)
    metrics_logger: MetricLogger = _NullMetrics()
    if request.tracking_uri and request.mlflow_run_id:
        metrics_logger = MlflowMetricLogger(request.tracking_uri, request.mlflow_run_id)
    ctx = StepContext(
        step=step.name, key=request.key, preset=request.preset, config=request.section,
        inputs=request.inputs, output_dir=attempt.local_dir, metrics=metrics_logger, on_cluster=request.on_cluster,
        log=logging.getLogger(f"vlv.steps.{step.name}"), output_uri=attempt.data_uri,
        scratch_uri=store.scratch_uri(step.name, request.key), cache_uri=store.cache_uri,
        tracking_uri=request.tracking_uri,
    )
    started = time.time()
    # The one line that says a step started (the driver's own is DEBUG): printed where it really starts, once
    # more if Ray reruns the task, with the resources Ray gave it.
    ctx.log.info("running step %s (key %s, attempt %s%s) into %s", step.name, request.key, attempt.attempt_id,
                 _assigned_resources(), attempt.data_uri)
    with _system_metrics(step, request):
        result = step.run(ctx)
    for rel in result.artifacts:
        if not (attempt.local_dir / rel).is_file():
            raise RuntimeError(f"step {step.name} declared artifact {rel} but did not write it")
    files = store.attempt_files(attempt)
    check_declared_outputs(step, files, attempt)
    manifest = Manifest(
        step=step.name, key=request.key, code_version=step.code_version, config=to_dict(request.section),
        upstream=request.upstream_keys, files=files,
        metrics={k: float(v) for k, v in result.metrics.items()}, artifacts=tuple(result.artifacts),
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        duration_s=round(time.time() - started, 3), mlflow_run_id=request.mlflow_run_id,
    )
    store.check_lock(step.name, request.key, request.lock_token)
    store.commit(attempt, manifest)
    ctx.log.debug("published %s: %d files, %.1f MB in %.1fs", step.name, len(manifest.files),
                  manifest.total_bytes / 1e6, manifest.duration_s)
    return manifest


def _assigned_resources() -> str:
    """`, 1 CPU, 0 GPU` inside a Ray task: what Ray reserved for it; "" outside one."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    try:
        assigned = ray.get_runtime_context().get_assigned_resources()
    except AssertionError:  # a driver (tests call execute_step directly): nothing is reserved for it
        return ""
    return f", {assigned.get('CPU', 0):g} CPU, {assigned.get('GPU', 0):g} GPU"


def check_declared_outputs(step: Step, files: Sequence[FileEntry], attempt: Attempt) -> None:
    """Every file the step declares is there, and every declared table has its declared columns and types."""
    names = {entry.path for entry in files}
    for declared in step.outputs:
        folder = str(declared)
        present = any(n.startswith(folder + "/") for n in names) if declared.is_folder else folder in names
        if not present and not declared.required:
            continue
        if not present:
            raise RuntimeError(f"step {step.name} declares the output {declared.path} ({declared.description}) "
                               f"but did not write it")
        if declared.schema is None:
            continue
        import pyarrow.parquet as pq

        local = attempt.local_dir / folder
        if local.is_file():
            schema = pq.read_schema(local)
        else:
            fs, path = filesystem(f"{attempt.data_uri}/{folder}")
            with fs.open(path, "rb") as handle:
                schema = pq.read_schema(handle)
        missing = [f"{f.name}: {f.type}" for f in declared.schema if schema.get_field_index(f.name) < 0
                   or not schema.field(f.name).type.equals(f.type)]
        if missing:
            raise RuntimeError(f"step {step.name} wrote {folder} without the declared column(s) {missing}; it has "
                               f"{[f'{f.name}: {f.type}' for f in schema]}")


@contextlib.contextmanager
def _system_metrics(step: Step, request: StepRequest) -> Iterator[None]:
    """CPU, memory, disk, network (and GPU where present) of this node, logged to the step's MLflow run as
    `system/*` while a step that works hard runs."""
    if not (step.system_metrics and request.tracking_uri and request.mlflow_run_id):
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(request.mlflow_run_id, sampling_interval=5, samples_before_logging=2,
                                   tracking_uri=request.tracking_uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()


class _NullMetrics:
    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        pass


def worker_logger(name: str) -> logging.Logger:
    """An INFO logger for code running in Ray actors/tasks, whose root logger Ray leaves at WARNING."""
    import sys

    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        install_log_redaction(logger)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
