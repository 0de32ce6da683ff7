"""The runner on Ray with MLflow: executes, caches, resumes after a failure, honours --force/--from."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vlv.run import RunOptions, StepFailed, run_pipeline
from vlv.testing.toy_steps import ToyConfig, ToySection, runs, toy_steps


def _options(store: Path, counter: Path, **kwargs) -> RunOptions:
    config = kwargs.pop("config", None) or ToyConfig(
        alpha=ToySection(counter_dir=str(counter)), beta=ToySection(value=10, counter_dir=str(counter)),
        gamma=ToySection(value=100, counter_dir=str(counter)))
    return RunOptions(config=config, store_uri=str(store), steps=toy_steps(), **kwargs)


@pytest.fixture
def dirs(tmp_path):
    counter = tmp_path / "counter"
    counter.mkdir()
    return tmp_path / "store", counter


def _children(outcome) -> dict[str, dict]:
    client = MlflowClient(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    found = client.search_runs([parent.info.experiment_id],
                               filter_string=f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    return {r.data.tags["vlv.step"]: {"tags": r.data.tags, "params": r.data.params, "metrics": r.data.metrics,
                                      "status": r.info.status, "id": r.info.run_id} for r in found}


def test_first_run_executes_then_everything_is_cached(ray_session, dirs):
    store, counter = dirs
    first = run_pipeline(_options(store, counter))
    assert first.executed() == ["alpha", "beta", "gamma"]
    assert (Path(first.steps[2].output_uri) / "value.txt").read_text() == "111"
    children = _children(first)
    assert children["gamma"]["tags"]["vlv.status"] == "executed"
    assert children["gamma"]["metrics"]["value"] == 111.0
    assert children["beta"]["params"]["value"] == "10"
    assert children["alpha"]["tags"]["vlv.output_uri"] == first.steps[0].output_uri
    parent = MlflowClient(first.tracking_uri).get_run(first.parent_run_id)
    assert parent.data.tags["vlv.pipeline"] == "full_run" and parent.data.tags["vlv.preset"] == "tiny"
    artifacts = {a.path for a in MlflowClient(first.tracking_uri).list_artifacts(children["beta"]["id"])}
    assert {"manifest.json", "table.csv"} <= artifacts

    second = run_pipeline(_options(store, counter))  # fully cached: no Ray work, no MLflow run
    assert second.executed() == [] and second.parent_run_id is None
    assert [(s.status, s.mlflow_run_id) for s in second.steps] == \
        [("cached", children[name]["id"]) for name in ("alpha", "beta", "gamma")]
    assert len(MlflowClient(first.tracking_uri).search_runs([parent.info.experiment_id])) == 4
    third = run_pipeline(_options(store, counter, force=("gamma",)))  # partly cached: children point at sources
    cached = _children(third)
    assert {name: c["tags"]["vlv.status"] for name, c in cached.items()} == \
        {"alpha": "cached", "beta": "cached", "gamma": "executed"}
    assert cached["beta"]["tags"]["vlv.source_run_id"] == children["beta"]["id"]
    assert MlflowClient(first.tracking_uri).get_run(third.parent_run_id).info.run_name == \
        "tiny: force gamma, 1 ran, 2 cached"
    assert [runs(counter, s) for s in ("alpha", "beta", "gamma")] == [1, 1, 2]


def test_failed_step_publishes_nothing_and_rerun_resumes(ray_session, dirs):
    store, counter = dirs
    failing = ToyConfig(alpha=ToySection(counter_dir=str(counter)),
                        beta=ToySection(value=10, fail=True, counter_dir=str(counter)),
                        gamma=ToySection(value=100, counter_dir=str(counter)))
    with pytest.raises(StepFailed, match="step 'beta' failed: RuntimeError: beta was told to fail"):
        run_pipeline(_options(store, counter, config=failing))
    assert not (store / "steps" / "beta").exists()  # the half-written output is not published
    assert runs(counter, "alpha") == 1 and runs(counter, "gamma") == 0

    fixed = run_pipeline(_options(store, counter))
    assert fixed.executed() == ["beta", "gamma"]  # alpha is not redone
    assert runs(counter, "alpha") == 1


def test_force_and_from(ray_session, dirs):
    store, counter = dirs
    run_pipeline(_options(store, counter))
    assert run_pipeline(_options(store, counter, force=("alpha",))).executed() == ["alpha"]
    assert run_pipeline(_options(store, counter, from_step="beta")).executed() == ["beta", "gamma"]
    assert run_pipeline(_options(store, counter, only=("gamma",), force=("gamma",))).executed() == ["gamma"]
    assert [runs(counter, s) for s in ("alpha", "beta", "gamma")] == [2, 2, 3]


def test_dry_run_touches_nothing(ray_session, dirs):
    store, counter = dirs
    outcome = run_pipeline(_options(store, counter, dry_run=True))
    assert [p.action for p in outcome.plan] == ["run", "run", "run"] and outcome.steps == []
    assert runs(counter, "alpha") == 0 and not (store / "mlflow.db").exists()


def test_damaged_output_is_reported_with_its_path_and_blocks_downstream(ray_session, dirs):
    from vlv.run import verify_outputs

    store, counter = dirs
    first = run_pipeline(_options(store, counter))
    assert all(not problems for _, _, problems in verify_outputs(_options(store, counter)))
    damaged = Path(first.steps[0].output_uri) / "value.txt"
    damaged.write_text("1234567")  # truncated/overwritten: size differs from the manifest
    report = {step: problems for step, _, problems in verify_outputs(_options(store, counter))}
    assert report["alpha"] and str(damaged) in report["alpha"][0] and not report["beta"]
    with pytest.raises(StepFailed, match=r"output of 'alpha' is damaged .*--force alpha"):
        run_pipeline(_options(store, counter, force=("beta",)))
    assert run_pipeline(_options(store, counter, force=("alpha",))).executed() == ["alpha"]
    assert all(not problems for _, _, problems in verify_outputs(_options(store, counter)))


def test_unreachable_tracking_server_fails_before_any_step(ray_session, dirs, monkeypatch):
    store, counter = dirs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ValueError, match=r"MLflow tracking server http://127.0.0.1:9 is unreachable.*No step"):
        run_pipeline(_options(store, counter))
    assert runs(counter, "alpha") == 0
