"""Run a sweep: the pipeline once per grid point on one store, in one MLflow sweep run, results in the store.

Reads top to bottom: plan every point -> (dry run? stop) -> preflight every point -> sweep.json -> MLflow sweep run
-> run the points (one at a time, or `parallel` at once) -> results.csv, plots -> close the sweep run.

Sharing: step keys are content addresses, so points whose upstream settings agree plan the same upstream keys;
the first point to run such a step publishes it and the others find it cached. Concurrency: the store lets one
invocation at a time produce a step key (a second one is refused), so a point starts only when none of the steps
it has to run is being produced by a point already running (it waits until that output is published, then finds
it cached). Points are threads of this driver, each driving the runner against the same store and Ray; Ray
queues their tasks until the cluster has room.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from vlv.engine.executor import connect_ray
from vlv.engine.plan import PlannedStep
from vlv.engine.step import Step
from vlv.engine.store import RunStore
from vlv.job_env import check_job_paths
from vlv.presets import prepare_preset
from vlv.run import (
    ParentRunInfo,
    RunOptions,
    artifact_location,
    check_preflight,
    plan_run,
    run_pipeline,
)
from vlv.secrets import redact
from vlv.sweep.grid import PreparedSweep, SweepPoint
from vlv.sweep.results import (
    RESULTS_CSV,
    SWEEP_JSON,
    PointResult,
    metric_plots,
    results_table,
    sweep_description,
    sweep_folder_uri,
    write_sweep_file,
)
from vlv.tracking import (
    HEADLINE_METRICS,
    PipelineTracking,
    check_tracking_reachable,
    default_tracking_uri,
    headline_metrics,
)

log = logging.getLogger("vlv.sweep")

# How often a point waiting for another point's step re-checks whether that output is published.
WAIT_POLL_S = 2.0


@dataclass(frozen=True)
class SweepOptions:
    sweep: PreparedSweep
    store_uri: str
    parallel: int = 1
    dry_run: bool = False
    steps: tuple[Step, ...] | None = None  # the pipeline's steps; None = VLV's (tests pass a toy pipeline)
    headline: tuple[tuple[str, str, str], ...] = HEADLINE_METRICS  # (step, metric, column) in results.csv

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise ValueError(f"--parallel must be >= 1 (points run at once), got {self.parallel}")


@dataclass
class SweepOutcome:
    sweep: PreparedSweep
    plans: list[list[PlannedStep]]  # per point, as planned before anything ran
    results: list[PointResult]
    folder_uri: str
    sweep_run_id: str | None
    tracking_uri: str | None

    @property
    def failed(self) -> list[PointResult]:
        return [r for r in self.results if r.status != "ok"]


def run_sweep(options: SweepOptions) -> SweepOutcome:
    sweep = options.sweep
    check_job_paths(options.store_uri)
    point_options = [RunOptions(config=config, store_uri=options.store_uri, steps=options.steps)
                     for config in sweep.configs]
    store, plans = RunStore(options.store_uri), []
    for run_options in point_options:
        store, plan = plan_run(run_options)
        plans.append(plan)
    results = [PointResult(point) for point in sweep.points]
    folder = sweep_folder_uri(store, sweep.sweep_id)
    outcome = SweepOutcome(sweep, plans, results, folder, None, None)
    if options.dry_run:
        return outcome
    to_run = {p.index: {(s.name, s.key) for s in plan if s.action == "run"} for p, plan in zip(sweep.points, plans)}
    anything_to_run = any(to_run.values())
    if anything_to_run:  # every point's problems before any point runs
        _preflight_points(sweep, plans, point_options)
    write_sweep_file(store, sweep.sweep_id, SWEEP_JSON, sweep_description(sweep, store.uri).encode())
    metric_names = [name for _, _, name in options.headline]
    write_sweep_file(store, sweep.sweep_id, RESULTS_CSV, results_table(sweep, results, metric_names).encode())

    tracking = None
    if anything_to_run:
        tracking, outcome.tracking_uri = _open_tracking(store, sweep.configs[0].experiment)
        outcome.sweep_run_id = _start_sweep_run(tracking, sweep, store, options.parallel)
        log.info("sweep %s: MLflow run %s at %s", sweep.sweep_id, outcome.sweep_run_id, outcome.tracking_uri)
        if options.parallel > 1:
            connect_ray()  # once, from the main thread, before the points' threads start

    def run_point(point: SweepPoint) -> PointResult:
        parent = ParentRunInfo(
            tags={"vlv.sweep_id": sweep.sweep_id, "vlv.sweep_point": point.label,
                  "vlv.sweep_point_index": str(point.index),
                  **({"mlflow.parentRunId": outcome.sweep_run_id} if outcome.sweep_run_id else {})},
            params={f"grid.{axis}": label for axis, label in point.values},
            name_prefix=f"[{point.label}] ", open_when_cached=anything_to_run)
        return _run_point(point, replace(point_options[point.index], parent=parent), options.headline)

    def finished(result: PointResult) -> None:
        results[result.point.index] = result
        write_sweep_file(store, sweep.sweep_id, RESULTS_CSV, results_table(sweep, results, metric_names).encode())
        if tracking is not None and result.status == "ok":
            tracking.log_point_metrics(outcome.sweep_run_id, result.point.index, result.metrics)
        log.info("sweep %s: point %d/%d [%s] %s%s", sweep.sweep_id, result.point.index + 1, len(results),
                 result.point.label, result.status, f": {result.error}" if result.error else "")

    ok = False
    try:
        if options.parallel == 1:
            for point in sweep.points:
                finished(run_point(point))
        else:
            run_concurrently(list(sweep.points), to_run, run_point, finished, options.parallel,
                             lambda step, key: store.is_published(step, key))
        ok = not outcome.failed
    finally:
        _write_results(store, outcome, metric_names, tracking, ok)
    return outcome


def run_concurrently(points: Sequence[SweepPoint], to_run: dict[int, set[tuple[str, str]]],
                     run_point: Callable[[SweepPoint], PointResult], finished: Callable[[PointResult], None],
                     parallel: int, is_published: Callable[[str, str], bool]) -> None:
    """Run up to `parallel` points at once, in order as far as possible. A point waits while a running point
    produces one of the step keys it would run too, until that output is published (it is then cached for it)
    or the running point ended without it (then it runs that step itself)."""
    pending = list(points)
    running: dict[Future, SweepPoint] = {}
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sweep-point") as pool:
        while pending or running:
            claimed = set().union(*(to_run[p.index] for p in running.values())) if running else set()
            for point in list(pending):
                if len(running) >= parallel:
                    break
                if any(not is_published(*key) for key in to_run[point.index] & claimed):
                    continue
                running[pool.submit(run_point, point)] = point
                pending.remove(point)
                claimed |= to_run[point.index]
            done, _ = wait(running, timeout=WAIT_POLL_S, return_when=FIRST_COMPLETED)
            for future in done:
                running.pop(future)
                finished(future.result())


def _run_point(point: SweepPoint, options: RunOptions, headline: tuple[tuple[str, str, str], ...]) -> PointResult:
    """One point through the runner; a failure is recorded (status and one-line error), never raised."""
    try:
        outcome = run_pipeline(options)
    except Exception as err:  # noqa: BLE001 - one point's failure must not lose the others
        first_line = (str(err).strip().splitlines() or [""])[0]
        message = first_line if isinstance(err, ValueError) or "failed:" in first_line else \
            f"{type(err).__name__}: {first_line}"
        log.error("sweep point [%s] failed: %s", point.label, redact(str(err)))
        return PointResult(point, "failed", redact(message))
    metrics = headline_metrics({s.name: s.metrics for s in outcome.steps}, headline)
    return PointResult(point, "ok", "", metrics, ran=len(outcome.executed()),
                       cached=sum(s.status == "cached" for s in outcome.steps), parent_run_id=outcome.parent_run_id)


def _preflight_points(sweep: PreparedSweep, plans: list[list[PlannedStep]], options: list[RunOptions]) -> None:
    prepare_preset(sweep.configs[0])  # all points share the preset (paper_mini builds its assets once)
    points_by_problem: dict[str, list[str]] = {}  # the same missing path is one problem, not one per point
    for point, plan, run_options in zip(sweep.points, plans, options):
        steps = {step.name: step for step in run_options.pipeline()}
        try:
            check_preflight(steps, plan, run_options.config)
        except ValueError as err:
            points_by_problem.setdefault(str(err), []).append(point.label)
    if points_by_problem:
        raise ValueError("\n".join(
            f"{'every grid point' if len(labels) == len(sweep.points) else 'grid point ' + '; '.join(labels)}: "
            f"{problem}" for problem, labels in points_by_problem.items()) + "\nno grid point was run")


def _open_tracking(store: RunStore, experiment: str) -> tuple[PipelineTracking, str]:
    tracking_uri = default_tracking_uri(store.local_root if store.is_local else None)
    check_tracking_reachable(tracking_uri)
    with store.mutex("mlflow-db"):
        tracking = PipelineTracking(tracking_uri, experiment, artifact_location(store, tracking_uri))
    closed = tracking.close_runs_of_dead_drivers(socket.gethostname(), pipeline="sweep")
    if closed:
        log.info("marked %d MLflow sweep run(s) of killed drivers (pid gone) KILLED", closed)
    return tracking, tracking_uri


def _start_sweep_run(tracking: PipelineTracking, sweep: PreparedSweep, store: RunStore, parallel: int) -> str:
    spec = sweep.spec
    return tracking.start_parent(
        tags={"vlv.pipeline": "sweep", "vlv.sweep_id": sweep.sweep_id, "vlv.preset": spec.preset,
              "vlv.driver_host": socket.gethostname(), "vlv.driver_pid": str(os.getpid()), "vlv.store": store.uri,
              "vlv.sweep_folder": sweep_folder_uri(store, sweep.sweep_id)},
        params={"preset": spec.preset, "store": store.uri, "points": len(sweep.points), "parallel": parallel,
                "config_file": spec.config_file or "", "description": spec.description,
                **{f"set.{k}": v for k, v in spec.base_overrides.items()},
                **{f"grid.{axis.name}": ",".join(v.label for v in axis.values) for axis in spec.axes}},
        name=f"sweep {sweep.sweep_id}: {len(sweep.points)} points, running",
    )


def _write_results(store: RunStore, outcome: SweepOutcome, metric_names: Sequence[str],
                   tracking: PipelineTracking | None, ok: bool) -> None:
    """results.csv and a plot per metric into the sweep's folder; with a sweep run, the same files as its
    artifacts (the comparison) and a name saying what happened, and the run closed."""
    sweep, results = outcome.sweep, outcome.results
    try:
        with tempfile.TemporaryDirectory(prefix="vlv-sweep-") as tmp:
            table = Path(tmp) / RESULTS_CSV
            table.write_text(results_table(sweep, results, metric_names))
            plots = metric_plots(sweep, results, metric_names, Path(tmp))
            for path in (table, *plots):
                write_sweep_file(store, sweep.sweep_id, path.name, path.read_bytes())
            if tracking is not None:
                tracking.log_files(outcome.sweep_run_id, [table])
                tracking.log_files(outcome.sweep_run_id, plots, "plots")
    finally:
        if tracking is not None:
            done = [r for r in results if r.status != "pending"]
            failed = sum(r.status == "failed" for r in done)
            name = (f"sweep {sweep.sweep_id}: {len(done)} of {len(results)} points, "
                    f"{sum(r.ran for r in done)} steps ran" + (f", {failed} points failed" if failed else ""))
            tracking.end_parent(ok, name=name)
