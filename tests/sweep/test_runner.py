"""The sweep runner on the toy pipeline (cheap steps on Ray, real store and MLflow): shared steps run once, points
run concurrently, a failing point is recorded without losing the others, a rerun is cached."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vlv.config_tree import apply_overrides
from vlv.engine.store import RunStore
from vlv.sweep.grid import SweepSpec, parse_grid_flag, prepare_sweep
from vlv.sweep.runner import SweepOptions, run_concurrently, run_sweep
from vlv.testing.toy_steps import ToyConfig, ToySection, runs, toy_steps

HEADLINE = (("beta", "value", "beta_value"), ("gamma", "value", "gamma_value"))


def _sweep(counter: Path, grids: list[str]):
    base = ToyConfig(alpha=ToySection(counter_dir=str(counter)), beta=ToySection(value=10, counter_dir=str(counter)),
                     gamma=ToySection(value=100, counter_dir=str(counter)))
    spec = SweepSpec("tiny", None, {}, tuple(parse_grid_flag(g) for g in grids))
    return prepare_sweep(spec, lambda overrides: apply_overrides(base, overrides))


def _options(store: Path, sweep, parallel: int) -> SweepOptions:
    return SweepOptions(sweep, str(store), parallel=parallel, steps=toy_steps(), headline=HEADLINE)


def _rows(outcome) -> list[dict[str, str]]:
    with open(Path(outcome.folder_uri) / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_parallel_points_share_upstream_steps_and_record_a_failure(ray_session, tmp_path):
    counter = tmp_path / "counter"
    counter.mkdir()
    store = tmp_path / "store"
    sweep = _sweep(counter, ["gamma.value=100,200,300", "gamma.fail=false,true"])
    outcome = run_sweep(_options(store, sweep, parallel=3))

    assert (runs(counter, "alpha"), runs(counter, "beta")) == (1, 1)  # shared by all six points
    assert runs(counter, "gamma") == 6  # three succeed, three fail once each
    assert len(RunStore(str(store)).published_keys("beta")) == 1
    rows = _rows(outcome)
    assert [(r["gamma.value"], r["gamma.fail"], r["status"]) for r in rows] == [
        ("100", "false", "ok"), ("100", "true", "failed"), ("200", "false", "ok"), ("200", "true", "failed"),
        ("300", "false", "ok"), ("300", "true", "failed")]
    assert [r["gamma_value"] for r in rows if r["status"] == "ok"] == ["111.0", "211.0", "311.0"]
    assert all(r["beta_value"] == "11.0" for r in rows if r["status"] == "ok")
    assert all("gamma was told to fail" in r["error"] for r in rows if r["status"] == "failed")
    assert len(outcome.failed) == 3

    client = MlflowClient(outcome.tracking_uri)
    sweep_run = client.get_run(outcome.sweep_run_id)
    assert sweep_run.data.tags["vlv.pipeline"] == "sweep" and sweep_run.info.status == "FAILED"
    assert sweep_run.data.tags["vlv.sweep_id"] == sweep.sweep_id
    history = client.get_metric_history(outcome.sweep_run_id, "gamma_value")
    assert sorted((m.step, m.value) for m in history) == [(0, 111.0), (2, 211.0), (4, 311.0)]
    assert {a.path for a in client.list_artifacts(outcome.sweep_run_id)} >= {"results.csv", "plots"}
    points = client.search_runs([sweep_run.info.experiment_id],
                                filter_string=f"tags.`vlv.sweep_id` = '{sweep.sweep_id}' and "
                                              "tags.`vlv.pipeline` = 'full_run'")
    assert sorted(int(r.data.tags["vlv.sweep_point_index"]) for r in points) == list(range(6))
    assert {r.data.tags["mlflow.parentRunId"] for r in points} == {outcome.sweep_run_id}
    assert {r.data.params["grid.gamma.value"] for r in points} == {"100", "200", "300"}
    assert (Path(outcome.folder_uri) / "gamma_value.png").stat().st_size > 0


def test_rerun_after_a_fix_runs_only_what_failed_and_a_finished_sweep_is_cached(ray_session, tmp_path):
    counter = tmp_path / "counter"
    counter.mkdir()
    store = tmp_path / "store"
    first = run_sweep(_options(store, _sweep(counter, ["gamma.value=100,200"]), parallel=1))
    assert [r.status for r in first.results] == ["ok", "ok"] and first.sweep_run_id
    table = (Path(first.folder_uri) / "results.csv").read_bytes()
    experiment = MlflowClient(first.tracking_uri).get_run(first.sweep_run_id).info.experiment_id
    before = len(MlflowClient(first.tracking_uri).search_runs([experiment]))

    again = run_sweep(_options(store, _sweep(counter, ["gamma.value=100,200"]), parallel=2))
    assert again.sweep.sweep_id == first.sweep.sweep_id and again.sweep_run_id is None  # nothing to run
    assert (Path(again.folder_uri) / "results.csv").read_bytes() == table
    assert len(MlflowClient(first.tracking_uri).search_runs([experiment])) == before
    assert runs(counter, "gamma") == 2

    # One more value: only its own gamma runs; the cached points still get their parent runs in the new sweep run.
    grown = run_sweep(_options(store, _sweep(counter, ["gamma.value=100,200,300"]), parallel=1))
    assert grown.sweep.sweep_id != first.sweep.sweep_id
    assert [(r.ran, r.cached) for r in grown.results] == [(0, 3), (0, 3), (1, 2)]
    assert all(r.parent_run_id for r in grown.results)
    assert runs(counter, "gamma") == 3 and runs(counter, "alpha") == 1


def test_a_point_waits_while_another_produces_a_step_it_shares():
    from vlv.sweep.grid import SweepPoint
    from vlv.sweep.results import PointResult

    points = [SweepPoint(i, (("x", str(i)),), {}) for i in range(3)]
    to_run = {0: {("a", "k1"), ("b", "k0")}, 1: {("a", "k1"), ("b", "k2")}, 2: {("b", "k3")}}
    published: set[tuple[str, str]] = set()
    events: list[str] = []

    def run_point(point):
        events.append(f"start {point.index}")
        if point.index == 0:
            while "start 2" not in events:  # point 2 shares nothing, so it starts while point 0 runs
                pass
        published.update(to_run[point.index])
        events.append(f"end {point.index}")
        return PointResult(point, "ok")

    run_concurrently(points, to_run, run_point, lambda result: None, 3, lambda *key: key in published)
    assert events.index("start 1") > events.index("end 0")  # point 1 needed ("a", "k1") from point 0
    assert events.index("start 2") < events.index("end 0")


@pytest.mark.parametrize("parallel", [0, -1])
def test_parallel_must_be_positive(parallel, tmp_path):
    with pytest.raises(ValueError, match="--parallel must be >= 1"):
        _options(tmp_path, _sweep(tmp_path, ["gamma.value=1,2"]), parallel)
