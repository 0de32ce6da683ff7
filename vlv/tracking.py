"""MLflow bookkeeping for a pipeline invocation: one parent run, one child run per planned step.

Part of the engine layer. Only the runner opens and closes runs; the executor gives workers a `MlflowMetricLogger`
(tracking URI + run id) through their `StepContext` to log metrics by step (training loss, for example). Steps
never open, close or tag runs: the one thing they take from here is `metric_history`, to read the curves of
earlier steps' runs (the report's loss plots).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from vlv.config_tree import flatten
from vlv.engine.manifest import MANIFEST_NAME, Manifest
from vlv.engine.step_output import StepOutput
from vlv.secrets import redact, secret_values

_PARAM_MAX = 6000
# The numbers a pipeline invocation is judged by, logged on its parent run: (step, step's metric, parent's name).
HEADLINE_METRICS = (
    ("prepare_metadata", "rows_kept", "rows_kept"),
    ("download", "images_ok", "images_ok"),
    ("aesthetic_filter", "images_kept", "images_kept"),
    ("ingest_captions", "captions_ok", "captions_ok"),
    ("train_stage1", "images_used", "stage1_images"),  # what a train_stage1.max_images cap left to train on
    ("train_stage1", "final_loss", "stage1_final_loss"),
    ("train_stage2", "final_loss", "stage2_final_loss"),
    ("eval_fid", "fid", "fid"),
    ("eval_fid", "fid_recon", "fid_recon"),
    ("eval_vqa", "vqa_accuracy", "vqa_accuracy"),
    ("eval_arena", "arena_score", "arena_score"),
)
# MLflow 3 opens an experiment in its GenAI view unless this tag says it is about training models.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


@dataclass(frozen=True)
class LineageDataset:
    """One declared output of an upstream step, as the input of another step (e.g. download's shards)."""

    name: str  # e.g. "download/shards"
    producer: str  # the upstream step
    digest: str  # over the files' sha256: equal digests, equal bytes
    uri: str
    files: int
    size: int


def lineage_datasets(upstream: StepOutput, declared: Sequence[Any]) -> list[LineageDataset]:
    """A dataset per declared data output (tables, folders) of an upstream step, with a content digest."""
    found = []
    for output_file in declared:
        if not (output_file.is_folder or str(output_file).endswith((".parquet", ".jsonl"))):
            continue
        entries = upstream.files(output_file) if output_file.is_folder else \
            [e for e in upstream.manifest.files if e.path == str(output_file)]
        if not entries:
            continue
        digest = hashlib.sha256("".join(f"{e.path}:{e.sha256};" for e in entries).encode()).hexdigest()[:16]
        found.append(LineageDataset(f"{upstream.step}/{output_file}", upstream.step, digest,
                                    upstream.path(output_file), len(entries), sum(e.size for e in entries)))
    return found


def headline_metrics(step_metrics: Mapping[str, Mapping[str, float]],
                     table: Sequence[tuple[str, str, str]] = HEADLINE_METRICS) -> dict[str, float]:
    """The headline numbers found among the steps' metrics (a step not run or cached contributes nothing);
    `table` lists (step, step's metric, headline name), HEADLINE_METRICS for the VLV pipeline."""
    found = {}
    for step, metric, name in table:
        value = step_metrics.get(step, {}).get(metric)
        if value is not None:
            found[name] = float(value)
    return found


def default_tracking_uri(store_local_root: Path | None) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite database inside a local store (docs/DESIGN.md section 5)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if store_local_root is None:
        raise ValueError("the store is remote, so the default SQLite tracking database has nowhere to live; "
                         "set MLFLOW_TRACKING_URI to your MLflow server (e.g. http://mlflow:5000)")
    return f"sqlite:///{store_local_root / 'mlflow.db'}"


def check_tracking_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any step runs, when an MLflow server is configured but does not answer."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        problem = f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        problem = str(getattr(err, "reason", err))
    raise ValueError(
        f"the MLflow tracking server {tracking_uri} is unreachable ({problem}); start it "
        f"(infra/local/mlflow_server.sh start) or unset MLFLOW_TRACKING_URI to track in the store's SQLite file. "
        f"No step was run."
    )


class MlflowMetricLogger:
    """Logs metrics to one MLflow run. Picklable (two strings): it travels to Ray Train's rank 0.

    A metric series has no gaps and no duplicate steps even when training restarts: a worker that dies after
    logging step k but before the next checkpoint is replaced by one that recomputes the steps after the
    checkpoint (bit for bit, resume is deterministic) with a fresh copy of this logger. So on first use of a
    metric name each copy reads the run's history of that name and skips any explicit step already there.
    Calls without a step are logged every time (at MLflow's step 0), as before.
    """

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._client = None
        self._logged_steps: dict[str, set[int]] = {}  # per metric name, steps already in the run

    def __getstate__(self) -> dict:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "_client": None, "_logged_steps": {}}

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        client = self._connect()
        if step is not None:
            logged = self._logged_steps.get(name)
            if logged is None:
                logged = {int(m.step) for m in client.get_metric_history(self.run_id, name)}
                self._logged_steps[name] = logged
            if step in logged:
                return
        client.log_metric(self.run_id, name, float(value), timestamp=int(time.time() * 1000), step=step or 0)
        if step is not None:
            self._logged_steps[name].add(step)

    def copy_history(self, source_run_id: str, up_to_step: int) -> int:
        """Copy every metric point of steps 1..`up_to_step` of another run into this one (a resumed training
        run continues the curve of the run that was killed); returns how many points were copied."""
        from mlflow.entities import Metric

        client = self._connect()
        copied = 0
        for name in client.get_run(source_run_id).data.metrics:
            points = [m for m in client.get_metric_history(source_run_id, name) if 0 < m.step <= up_to_step]
            logged = {int(m.step) for m in client.get_metric_history(self.run_id, name)}
            fresh = [Metric(name, m.value, m.timestamp, m.step) for m in points if m.step not in logged]
            for start in range(0, len(fresh), 500):
                client.log_batch(self.run_id, metrics=fresh[start:start + 500])
            self._logged_steps.pop(name, None)  # read again on next use, copied points included
            copied += len(fresh)
        return copied

    def _connect(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client


class PipelineTracking:
    """Parent/child run layout of docs/DESIGN.md section 5 on top of `MlflowClient`."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=artifact_root, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        else:
            self.experiment_id = found.experiment_id
            if EXPERIMENT_KIND_TAG not in found.tags:
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        self.parent_run_id: str | None = None
        self._secrets = secret_values()

    def start_parent(self, tags: Mapping[str, str], params: Mapping[str, Any], name: str = "full_run") -> str:
        run = self.client.create_run(self.experiment_id, tags=self._clean(tags), run_name=self._redact(name))
        self.parent_run_id = run.info.run_id
        self._log_params(self.parent_run_id, params)
        return self.parent_run_id

    def close_runs_of_dead_drivers(self, host: str, pipeline: str = "full_run") -> int:
        """A killed driver (SIGKILL, OOM) leaves its parent and step runs RUNNING for ever: mark those whose
        driver ran on `host` (tags vlv.driver_host / vlv.driver_pid) and is gone KILLED, and their unfinished
        step runs vlv.status=killed. `pipeline` is the parent's vlv.pipeline tag (full_run, or sweep: a sweep's
        run, whose children are its points' parent runs). Returns how many parent runs were closed."""
        closed = 0
        parents = self.client.search_runs([self.experiment_id], max_results=1000, filter_string=(
            f"attributes.status = 'RUNNING' and tags.`vlv.pipeline` = '{pipeline}' and "
            f"tags.`vlv.driver_host` = '{host}'"))
        for parent in parents:
            if _pid_alive(int(parent.data.tags.get("vlv.driver_pid", "0"))):
                continue
            children = self.client.search_runs([self.experiment_id], max_results=1000, filter_string=(
                f"attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` = '{parent.info.run_id}'"))
            for child in children:
                self.client.set_tag(child.info.run_id, "vlv.status", "killed")
                self.client.set_terminated(child.info.run_id, "KILLED")
            self.client.set_terminated(parent.info.run_id, "KILLED")
            closed += 1
        return closed

    def end_parent(self, ok: bool, name: str = "", metrics: Mapping[str, float] | None = None) -> None:
        """Close the parent run, named for what the invocation did and carrying its headline numbers."""
        if not self.parent_run_id:
            return
        if name:
            self.client.update_run(self.parent_run_id, name=self._redact(name)[:250])
        for metric, value in (metrics or {}).items():
            self.client.log_metric(self.parent_run_id, metric, float(value))
        self.client.set_terminated(self.parent_run_id, "FINISHED" if ok else "FAILED")

    def log_point_metrics(self, run_id: str, index: int, metrics: Mapping[str, float]) -> None:
        """One sweep point's numbers on the sweep's run at step = the point's index: MLflow's charts of that run
        then draw each metric across the points."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(name, float(value), now, index) for name, value in sorted(metrics.items())]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_files(self, run_id: str, paths: Sequence[Path], folder: str | None = None) -> None:
        """Files made by the driver (a sweep's results table and plots) as artifacts of a run."""
        for path in paths:
            self.client.log_artifact(run_id, str(path), folder)

    def start_child(self, step: str, key: str, output_uri: str, section: Mapping[str, Any]) -> str:
        tags = {"mlflow.parentRunId": self.parent_run_id or "", "vlv.step": step, "vlv.key": key,
                "vlv.output_uri": output_uri, "vlv.status": "running"}
        run = self.client.create_run(self.experiment_id, tags=self._clean(tags), run_name=step)
        self._log_params(run.info.run_id, section)
        return run.info.run_id

    def finish_child(self, run_id: str, status: str, manifest: Manifest | None, output: StepOutput | None,
                     source_run_id: str | None = None, error: str | None = None) -> None:
        self.client.set_tag(run_id, "vlv.status", status)
        if source_run_id:
            self.client.set_tag(run_id, "vlv.source_run_id", source_run_id)
        if error:
            self.client.set_tag(run_id, "vlv.error", self._redact(error)[:5000])
        if manifest is not None:
            for name, value in manifest.metrics.items():
                self.client.log_metric(run_id, name, float(value))
            self.client.log_text(run_id, manifest.to_json(), MANIFEST_NAME)
            if output is not None:
                for rel in manifest.artifacts:
                    if not output.has(rel):
                        continue
                    path = output.local_path(rel)  # in place on a local store, fetched once from an object store
                    parent = str(Path(rel).parent)
                    self.client.log_artifact(run_id, str(path), None if parent == "." else parent)
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")

    def log_lineage(self, run_id: str, datasets: Sequence[LineageDataset]) -> None:
        """The step's inputs as MLflow datasets (the Inputs tab): name, content digest, where they live, size."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [DatasetInput(Dataset(name=d.name, digest=d.digest, source_type="vlv-step-output",
                                       source=json.dumps({"uri": d.uri}),
                                       profile=json.dumps({"files": d.files, "bytes": d.size})),
                               tags=[InputTag("mlflow.data.context", d.producer)])
                  for d in datasets]
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

    # ------------------------------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _clean(self, tags: Mapping[str, str]) -> dict[str, str]:
        return {k: self._redact(str(v)) for k, v in tags.items()}

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params) if params else {}
        items = [Param(k, self._redact(str(v))[:_PARAM_MAX]) for k, v in sorted(flat.items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])


def _pid_alive(pid: int) -> bool:
    """Whether a process of this host is running (a pid that was reused counts as alive: never closes wrongly)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metric_history(tracking_uri: str, run_id: str, name: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of one run, by step: training curves for reports and tests."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(run_id, name)
    return sorted((int(m.step), float(m.value)) for m in history)
