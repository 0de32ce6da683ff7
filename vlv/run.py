"""Run the pipeline: plan, open MLflow runs, execute or skip each step on Ray, publish, report.

Reads top to bottom: build config and store -> plan -> (dry run? print and stop) -> preflight -> Ray ->
parent run -> for each planned step {cached: child run pointing at its source; run: child run + Ray task}.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from vlv.engine.cluster import current_cluster, fit_problems, missing_paths_on_nodes
from vlv.engine.executor import StepRequest, connect_ray, submit_step
from vlv.engine.manifest import verify_files
from vlv.engine.plan import PlannedStep, describe_plan, make_plan
from vlv.engine.progress_board import ProgressDisplay
from vlv.engine.step import Step, StepOutput
from vlv.engine.store import RunStore, StoreLockedError
from vlv.job_env import check_job_paths
from vlv.pipeline import pipeline_steps
from vlv.pipeline_config import PipelineConfig
from vlv.presets import prepare_preset
from vlv.tracking import (
    PipelineTracking,
    check_tracking_reachable,
    default_tracking_uri,
    headline_metrics,
    lineage_datasets,
)

log = logging.getLogger("vlv.run")

DEFAULT_STORE = "./vlv_runs"
# Upstream outputs up to this size get a full sha256 check before a step reads them (about 2 s a GB).
CHECKSUM_INPUTS_MAX_BYTES = 2 << 30


class StepFailed(RuntimeError):
    """A step raised; the message names the step and how to resume."""


@dataclass(frozen=True)
class ParentRunInfo:
    """What a caller adds to the invocation's MLflow parent run: a sweep names its point there, nests the run
    under the sweep's run, and wants a run even for a point whose every step is cached (all its points then sit
    side by side in MLflow)."""

    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    name_prefix: str = ""
    open_when_cached: bool = False


@dataclass(frozen=True)
class RunOptions:
    config: PipelineConfig
    store_uri: str = DEFAULT_STORE
    only: tuple[str, ...] = ()
    from_step: str | None = None
    force: tuple[str, ...] = ()
    dry_run: bool = False
    # The steps to plan over, in dependency order; None means the VLV pipeline (tests pass their own).
    steps: tuple[Step, ...] | None = None
    parent: ParentRunInfo = field(default_factory=ParentRunInfo)

    def pipeline(self) -> list[Step]:
        return list(self.steps) if self.steps is not None else pipeline_steps()


@dataclass
class StepOutcome:
    name: str
    key: str
    status: str  # executed | cached | skipped | failed
    output_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None


@dataclass
class PipelineOutcome:
    plan: list[PlannedStep]
    steps: list[StepOutcome]
    parent_run_id: str | None
    store_uri: str
    tracking_uri: str | None

    def executed(self) -> list[str]:
        return [s.name for s in self.steps if s.status == "executed"]


def plan_run(options: RunOptions) -> tuple[RunStore, list[PlannedStep]]:
    store = RunStore(options.store_uri)
    store.check_access()
    plan = make_plan(options.pipeline(), options.config, store, only=options.only, from_step=options.from_step,
                     force=options.force)
    return store, plan


def run_pipeline(options: RunOptions) -> PipelineOutcome:
    check_job_paths(options.store_uri)  # under `ray job submit`, refuse a store lost with Ray's temp copy
    config = options.config
    store, plan = plan_run(options)
    if options.dry_run:
        return PipelineOutcome(plan, [], None, store.uri, None)
    log.info("plan for preset %s, store %s:\n%s", config.preset, store.uri, describe_plan(plan))
    steps = {step.name: step for step in options.pipeline()}
    to_run = [p for p in plan if p.action == "run"]
    if not to_run and not options.parent.open_when_cached:
        # nothing to do: start no Ray, load no model, open no MLflow run
        log.info("every planned step is cached: nothing to run (their MLflow runs are named in each manifest)")
        return PipelineOutcome(plan, [_cached_outcome(store, p) for p in plan], None, store.uri, None)
    if to_run:
        prepare_preset(config)  # e.g. paper_mini's models and data, which the preflight checks below look for
        check_preflight(steps, plan, config)

    tracking_uri = default_tracking_uri(store.local_root if store.is_local else None)
    check_tracking_reachable(tracking_uri)
    artifact_root = artifact_location(store, tracking_uri)
    with store.mutex("mlflow-db"):  # two invocations on a new store would both create MLflow's tables
        tracking = PipelineTracking(tracking_uri, config.experiment, artifact_root)
    on_cluster = connect_ray() if to_run else bool(os.environ.get("RAY_ADDRESS"))
    display = ProgressDisplay()  # the live status line, when the console is a terminal
    if to_run:
        check_against_cluster([steps[p.name] for p in to_run], to_run, config, on_cluster=on_cluster)
        display.start()
    closed = tracking.close_runs_of_dead_drivers(socket.gethostname())
    if closed:
        log.info("marked %d MLflow run(s) of killed drivers (pid gone) KILLED", closed)
    parent_id = tracking.start_parent(
        tags={"vlv.pipeline": "full_run", "vlv.preset": config.preset, "vlv.config_hash": config.config_hash(),
              "vlv.driver_host": socket.gethostname(), "vlv.driver_pid": str(os.getpid()),
              "vlv.git_commit": _git_commit(), "vlv.store": store.uri, **options.parent.tags},
        params={"preset": config.preset, "store": store.uri, "steps": ",".join(options.only) or "all",
                "from": options.from_step or "", "force": ",".join(options.force), **options.parent.params},
        name=f"{options.parent.name_prefix}{config.preset}: running {len(to_run)} of {len(plan)} steps",
    )
    log.info("MLflow parent run %s at %s", parent_id, tracking_uri)
    outcomes: list[StepOutcome] = []
    ok = False
    try:
        for planned in plan:
            outcomes.append(_run_planned_step(steps[planned.name], planned, config, store, tracking, tracking_uri,
                                               on_cluster, steps, display))
        ok = True
    finally:
        tracking.end_parent(ok, name=options.parent.name_prefix + describe_invocation(config.preset, options,
                                                                                       outcomes, plan, ok),
                            metrics=headline_metrics({o.name: o.metrics for o in outcomes}))
    return PipelineOutcome(plan, outcomes, parent_id, store.uri, tracking_uri)


def check_preflight(steps: Mapping[str, Step], plan: Sequence[PlannedStep], config: PipelineConfig) -> None:
    """Every problem of every step about to run (missing weights, impossible batch sizes) in one ValueError."""
    problems = []
    for planned in plan:
        if planned.action != "run":
            continue
        try:
            steps[planned.name].preflight(getattr(config, planned.name))
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ValueError(problems[0] if len(problems) == 1 else
                         f"{len(problems)} problems, no step was run:\n  " + "\n  ".join(problems))


def artifact_location(store: RunStore, tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: a tracking server decides for itself (None); with a database
    file (SQLite) they go into the store (`<store>/mlflow-artifacts`, local or object store), never into the
    current directory, which is MLflow's default."""
    if tracking_uri.startswith(("http://", "https://", "databricks")):
        return None
    return f"{store.uri.rstrip('/')}/mlflow-artifacts" if not store.is_local else \
        str(store.local_root / "mlflow-artifacts")


def describe_invocation(preset: str, options: RunOptions, outcomes: Sequence[StepOutcome],
                        plan: Sequence[PlannedStep], ok: bool) -> str:
    """The parent run's name: what this invocation asked for and did, e.g. 'tiny: from download, 9 ran, 1 cached'."""
    if options.only:
        asked = "steps " + ",".join(options.only)
    elif options.from_step:
        asked = f"from {options.from_step}"
    elif options.force:
        asked = "force " + ",".join(options.force)
    else:
        asked = "all steps"
    ran = sum(o.status == "executed" for o in outcomes)
    cached = sum(o.status == "cached" for o in outcomes)
    name = f"{preset}: {asked}, {ran} ran, {cached} cached"
    if not ok:
        done = {o.name for o in outcomes if o.status in ("executed", "cached", "skipped")}
        failed = next((p.name for p in plan if p.name not in done), "?")
        name += f", failed at {failed}"
    return name


def _cached_outcome(store: RunStore, planned: PlannedStep) -> StepOutcome:
    output = store.output(planned.name, planned.key) if planned.action == "cached" else None
    if output is None:
        return StepOutcome(planned.name, planned.key, "skipped", store.output_uri(planned.name, planned.key))
    return StepOutcome(planned.name, planned.key, "cached", output.uri, dict(output.manifest.metrics),
                       output.manifest.mlflow_run_id)


def _run_planned_step(step: Step, planned: PlannedStep, config: PipelineConfig, store: RunStore,
                      tracking: PipelineTracking, tracking_uri: str, on_cluster: bool, steps_by_name: dict[str, Step],
                      display: ProgressDisplay) -> StepOutcome:
    """What the plan says for one step: skip it, record its cached output, or run it and record the result."""
    output_uri = store.output_uri(planned.name, planned.key)
    if planned.action == "skip":
        return StepOutcome(planned.name, planned.key, "skipped", output_uri)
    run_id = tracking.start_child(planned.name, planned.key, output_uri, planned.settings)
    if planned.action == "cached":
        return _cached(planned, store, tracking, run_id)

    resources = planned.work.task
    resources = dataclasses.replace(resources, max_retries=getattr(config, "step_max_retries", resources.max_retries))
    inputs = {}
    for up, up_key in planned.upstream_keys.items():
        given = store.output(up, up_key)
        if given is None and up in step.optional_upstream:
            log.info("step %-16s runs without %s (not produced: it waits for an outside input)", planned.name, up)
            continue
        assert given is not None, "upstream steps run first or are checked by the planner"
        inputs[up] = given
        _check_input(planned.name, given, tracking, run_id)
    started = time.time()
    try:
        with store.lock(planned.name, planned.key, owner=tracking.parent_run_id or "?") as token:
            if not planned.forced and store.is_published(planned.name, planned.key):
                log.info("step %-16s published by another invocation while this one planned; cached", planned.name)
                return _cached(planned, store, tracking, run_id)
            if planned.forced:  # a rerun means afresh: no "resuming" a finished or half-done earlier attempt
                store.discard_partial_work(planned.name, planned.key)
            request = StepRequest(
                step=step, key=planned.key, preset=config.preset, section=planned.section,
                upstream_keys=planned.upstream_keys, inputs=inputs,
                store_uri=store.uri, tracking_uri=tracking_uri, mlflow_run_id=run_id, on_cluster=on_cluster,
                lock_token=token, forced=planned.forced,
            )
            # DEBUG: the step's worker says when it really starts (vlv.engine.executor.execute_step)
            log.debug("step %-16s submitted (key %s, %s CPU, %s GPU)", planned.name, planned.key, resources.num_cpus,
                      resources.num_gpus)
            with display.step(planned.name):
                manifest = submit_step(request, resources)
    except BaseException as err:  # noqa: BLE001 - record the failure in MLflow, then re-raise
        message = _error_message(err)
        tracking.finish_child(run_id, "failed", None, None, error=message)
        if isinstance(err, (KeyboardInterrupt, SystemExit, StoreLockedError)):
            raise
        raise StepFailed(
            f"step '{planned.name}' failed: {message}\nFinished steps stay cached: fix the cause and rerun the "
            f"same command to resume from '{planned.name}'."
        ) from err
    output = store.output(planned.name, planned.key)
    tracking.finish_child(run_id, "executed", manifest, output)
    _log_lineage(tracking, run_id, inputs, steps_by_name)
    if step.registered_model and output is not None:
        _register_model(tracking, run_id, output, step.registered_model)
    log.info("step %-16s done in %.1fs (%d files, %.1f MB): %s", planned.name, time.time() - started,
             len(manifest.files), manifest.total_bytes / 1e6,
             ", ".join(f"{k}={v:g}" for k, v in manifest.metrics.items()))
    return StepOutcome(planned.name, planned.key, "executed", output.uri if output else output_uri,
                       dict(manifest.metrics), run_id)


def _register_model(tracking: PipelineTracking, run_id: str, output: StepOutput, name: str) -> str:
    """Log a published captioner folder as a pyfunc model into its step's run and register a new version of
    `name` (`mlflow.pyfunc.load_model("models:/<name>/<version>")`, `mlflow models serve`); returns it. Here,
    not in `vlv.tracking`: the model wraps the captioner code, which sits above the engine layer."""
    from vlv.serving import log_captioner_model  # imports mlflow

    registered = log_captioner_model(tracking.client, run_id, output.local_folder(), registered_name=name)
    tracking.client.set_tag(run_id, "vlv.registered_model", f"{registered.name}/{registered.version}")
    return registered.version


def _log_lineage(tracking: PipelineTracking, run_id: str, inputs: dict[str, StepOutput],
                 steps_by_name: dict[str, Step]) -> None:
    datasets = [d for name, given in inputs.items()
                for d in lineage_datasets(given, steps_by_name[name].outputs if name in steps_by_name else ())]
    try:
        tracking.log_lineage(run_id, datasets)
    except Exception as err:  # noqa: BLE001 - lineage is a record of what ran; its absence must not fail a run
        log.warning("could not log the input datasets of MLflow run %s: %s", run_id, err)


def _cached(planned: PlannedStep, store: RunStore, tracking: PipelineTracking, run_id: str) -> StepOutcome:
    output = store.output(planned.name, planned.key)
    assert output is not None, "only called for a published output"
    manifest = output.manifest
    tracking.finish_child(run_id, "cached", manifest, output, source_run_id=manifest.mlflow_run_id)
    log.info("step %-16s cached (key %s)", planned.name, planned.key)
    return StepOutcome(planned.name, planned.key, "cached", output.uri, dict(manifest.metrics), run_id)


def _check_input(step: str, given: StepOutput, tracking: PipelineTracking, run_id: str) -> None:
    """Refuse to start on a damaged upstream output, naming the file, the check that found it and the fix.

    Sizes are always checked; checksums too when the input is at most CHECKSUM_INPUTS_MAX_BYTES (reading it
    costs seconds), since only they catch a same-size corruption. Larger inputs: `vlv verify` checks them.
    """
    checksums = given.manifest.total_bytes <= CHECKSUM_INPUTS_MAX_BYTES
    problems = verify_files(given.uri, given.manifest, checksums=checksums)
    if not problems:
        return
    checks = "sizes and sha256 checksums" if checksums else \
        "sizes only (too large to checksum before every step; `vlv verify` checks sha256)"
    message = (f"step '{step}' cannot start: the output of '{given.step}' is damaged ({'; '.join(problems[:3])}"
               f"{f'; and {len(problems) - 3} more' if len(problems) > 3 else ''}; checked: {checks}). Rerun it "
               f"with --force {given.step} (same config flags).")
    tracking.finish_child(run_id, "failed", None, None, error=message)
    raise StepFailed(message)


def _error_message(err: BaseException) -> str:
    """The root cause of a step failure in one line (Ray wraps the worker's exception)."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}" if not isinstance(cause, ValueError) \
        else f"{text[-1] if text else cause!r}"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def format_outcome(outcome: PipelineOutcome) -> str:
    lines = [f"{'step':<18}{'status':<10}{'key':<22}metrics"]
    for s in outcome.steps:
        metrics = ", ".join(f"{k}={v:g}" for k, v in sorted(s.metrics.items())[:6])
        lines.append(f"{s.name:<18}{s.status:<10}{s.key:<22}{metrics}")
    lines.append(f"store: {outcome.store_uri}")
    for step in outcome.steps:
        if step.name == "report" and step.status in ("executed", "cached"):
            lines.append(f"report: {step.output_uri}/report.html")
    if outcome.tracking_uri:
        lines.append(f"MLflow: {outcome.tracking_uri} (parent run {outcome.parent_run_id})")
    return "\n".join(lines)


def step_state(store: RunStore, planned: PlannedStep) -> str:
    """published / partial (an unfinished attempt's staging folder) / missing, for one planned step."""
    manifest = store.read_manifest(planned.name, planned.key)
    if manifest is not None:
        return f"published {manifest.created_at} ({len(manifest.files)} files)"
    if store.is_local and store.staging_dir(planned.name, planned.key).exists():
        return "partial: an unfinished attempt, which the next run continues or redoes"
    return "missing"


def step_names_from_flags(values: Sequence[str]) -> tuple[str, ...]:
    """`--steps a,b --steps c` -> ("a", "b", "c")."""
    return tuple(name.strip() for value in values for name in value.split(",") if name.strip())


def verify_outputs(options: RunOptions) -> list[tuple[str, str, list[str]]]:
    """For `vlv verify`: full checksum check of every published output of this config (any store)."""
    store, plan = plan_run(options)
    report = []
    for planned in plan:
        output = store.output(planned.name, planned.key)
        if output is not None:
            report.append((planned.name, planned.key, verify_files(output.uri, output.manifest)))
    return report


def check_against_cluster(steps: Sequence[Step], planned: Sequence[PlannedStep], config: PipelineConfig, *,
                          on_cluster: bool) -> None:
    """Before any step runs: every declared worker fits some node, every weight path exists where it loads."""
    problems = fit_problems({p.name: p.work for p in planned}, current_cluster())
    paths = {setting: value for step in steps
             for setting, value in step.weight_paths(getattr(config, step.name)).items()}
    problems += missing_paths_on_nodes(paths, on_cluster=on_cluster)
    if problems:
        raise ValueError("preflight against the Ray cluster failed, no step was run:\n  " + "\n  ".join(problems))
