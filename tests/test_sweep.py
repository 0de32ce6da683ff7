"""End to end: `pipelines/sweep.py` on the tiny preset, two points differing only in a late step's setting.

Cost: the session's tiny pipeline run (fixture `tiny_store`, shared with other tests) copied into a fresh store,
plus the second point's own late steps (eval_arena, report). The slow test runs a sweep from an empty store.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines import sweep as sweep_cli
from vlv import cli
from vlv.engine.store import RunStore
from vlv.pipeline import step_names

GRID = "eval_arena.seed=0,1"  # 0 is the tiny preset's own value: that point is the session's run
SHARED = [name for name in step_names() if name not in ("eval_arena", "report")]


@pytest.fixture(scope="module")
def swept(tiny_store, tmp_path_factory):
    """A store holding the tiny run's outputs (not its MLflow database), swept once through the CLI."""
    store = tmp_path_factory.mktemp("sweep") / "store"
    shutil.copytree(tiny_store / "steps", store / "steps")
    assert sweep_cli.main(["--preset", "tiny", "--store", str(store), "--grid", GRID]) == 0
    folder, = (store / "sweeps").iterdir()
    return store, folder


def _runs(store: Path, filter_string: str) -> list:
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vlv")
    return client.search_runs([experiment.experiment_id], filter_string=filter_string)


def test_upstream_steps_are_shared_and_only_the_late_steps_run_again(swept):
    store, _ = swept
    published = RunStore(str(store))
    for name in SHARED:
        assert len(published.published_keys(name)) == 1, name
    assert len(published.published_keys("eval_arena")) == 2
    assert len(published.published_keys("report")) == 2


def test_results_csv_has_a_row_per_point_with_the_published_metrics(swept):
    store, folder = swept
    with open(folder / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["point"], r["eval_arena.seed"], r["status"]) for r in rows] == [("0", "0", "ok"), ("1", "1", "ok")]
    published = RunStore(str(store))
    by_seed = {}
    for key in published.published_keys("eval_arena"):
        manifest = published.read_manifest("eval_arena", key)
        by_seed[str(manifest.config["seed"])] = manifest.metrics["arena_score"]
    for row in rows:
        assert float(row["arena_score"]) == pytest.approx(by_seed[row["eval_arena.seed"]])
        assert 0.0 <= float(row["arena_score"]) <= 6.0
        assert float(row["images_ok"]) > 0 and float(row["stage2_final_loss"]) > 0 and row["fid"]
    assert rows[0]["stage1_final_loss"] == rows[1]["stage1_final_loss"]  # one stage-1 training behind both
    assert (folder / "arena_score.png").stat().st_size > 0 and (folder / "sweep.json").exists()


def test_mlflow_holds_the_sweep_run_and_a_parent_run_per_point(swept):
    store, folder = swept
    sweep_runs = _runs(store, "tags.`vlv.pipeline` = 'sweep'")
    assert len(sweep_runs) == 1
    sweep_run = sweep_runs[0]
    assert sweep_run.data.tags["vlv.sweep_id"] == folder.name and sweep_run.info.status == "FINISHED"
    points = _runs(store, f"tags.`vlv.sweep_id` = '{folder.name}' and tags.`vlv.pipeline` = 'full_run'")
    by_point = {r.data.tags["vlv.sweep_point"]: r for r in points}
    assert set(by_point) == {"eval_arena.seed=0", "eval_arena.seed=1"}
    assert {r.data.tags["mlflow.parentRunId"] for r in points} == {sweep_run.info.run_id}
    children = _runs(store, f"tags.mlflow.parentRunId = '{by_point['eval_arena.seed=1'].info.run_id}'")
    statuses = {r.data.tags["vlv.step"]: r.data.tags["vlv.status"] for r in children}
    assert statuses == {name: "executed" if name in ("eval_arena", "report") else "cached" for name in step_names()}
    assert by_point["eval_arena.seed=1"].data.metrics["arena_score"] == \
        sweep_run.data.metrics["arena_score"]  # the sweep run's last point, step 1
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(sweep_run.info.run_id, "plots")}
    assert "plots/arena_score.png" in artifacts


def test_rerunning_the_same_command_is_fully_cached_and_writes_the_same_table(swept, capsys):
    store, folder = swept
    table = (folder / "results.csv").read_bytes()
    before = len(_runs(store, ""))
    capsys.readouterr()
    assert sweep_cli.main(["--preset", "tiny", "--store", str(store), "--grid", GRID]) == 0
    assert f"sweep {folder.name}: 2 points" in capsys.readouterr().out
    assert (folder / "results.csv").read_bytes() == table
    assert len(_runs(store, "")) == before  # nothing ran: no MLflow run opened
    assert [p.name for p in (store / "sweeps").iterdir()] == [folder.name]


def test_a_bad_grid_key_is_one_error_before_anything_runs(tmp_path, capsys):
    store = tmp_path / "store"
    code = sweep_cli.main(["--preset", "tiny", "--store", str(store), "--grid", "eval_arena.sead=0,1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --grid eval_arena.sead=0: unknown config key 'eval_arena.sead'")
    assert "valid keys there:" in err and "seed" in err
    assert not store.exists()
    assert cli.main(["sweep", "--preset", "tiny", "--store", str(store), "--grid", "eval_arena.seed=0,x"]) == 2
    assert "--grid eval_arena.seed=x: config key 'eval_arena.seed' expects int" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_from_an_empty_store_trains_once_with_points_in_parallel(ray_session, tmp_path):
    store = tmp_path / "store"
    assert sweep_cli.main(["--preset", "tiny", "--store", str(store), "--grid", GRID, "--parallel", "2"]) == 0
    published = RunStore(str(store))
    for name in SHARED:
        assert len(published.published_keys(name)) == 1, name
    executed = _runs(store, "tags.`vlv.status` = 'executed'")
    counts = {}
    for run in executed:
        counts[run.data.tags["vlv.step"]] = counts.get(run.data.tags["vlv.step"], 0) + 1
    assert counts == {name: 2 if name in ("eval_arena", "report") else 1 for name in step_names()}
