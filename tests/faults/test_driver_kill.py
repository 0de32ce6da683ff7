"""SIGKILL the pipeline driver in the middle of a step, rerun the same command, compare with an uninterrupted run.

Each case starts from a new store holding copies of the shared tiny run's upstream outputs (same config, so
the same keys: they are cached there), runs `full_run.py --steps <upstream>,<step>` as a subprocess, kills
the driver once the step is mid-work, and checks: nothing of the step was published, no partial folder is
visible outside `.staging`, no worker process outlived the driver; then the same command finishes, the
upstream steps were cached (MLflow child runs), and the output equals the uninterrupted run's (data steps:
the same sha256 for every file; training: the same step count, resumed from a checkpoint; eval: the same
metrics).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vlv.models.trained_folder import STAGE1_WEIGHTS
from vlv.testing.driver_faults import (
    MID_STEP,
    ancestors,
    child_statuses,
    file_digests,
    kill_driver,
    published,
    read_manifest,
    run_driver,
    start_driver,
    stray_folders,
    wait_for,
)

REACH_TIMEOUT_S = 1800.0  # a hang guard only: the machine may be loaded
# Metrics that measure the machine, not the data: excluded when comparing with the uninterrupted run.
THROUGHPUT_METRICS = {"rows_per_s", "samples_per_s"}


def _data_metrics(folder: Path) -> dict[str, float]:
    return {k: v for k, v in read_manifest(folder).metrics.items() if k not in THROUGHPUT_METRICS}


def _kill_mid_step_then_rerun(store: Path, step: str, log: Path) -> tuple[Path, list[dict[str, str]]]:
    """Kill the driver mid-`step`, check what it left, rerun; returns the output folder and MLflow statuses."""
    steps = (*ancestors(step), step)
    driver = start_driver(store, log, steps=steps)
    reached = wait_for(driver, lambda: MID_STEP[step](driver), REACH_TIMEOUT_S)
    assert reached, f"the driver never got to the middle of {step}:\n{driver.log()[-4000:]}"
    report = kill_driver(driver, step)

    assert report.descendants > 0
    assert report.workers == [], f"processes outlived the killed driver: {report.workers}"
    assert published(store, step) == [], f"{step} was published although its driver was killed"
    assert stray_folders(store, step) == []
    assert any((store / ".staging" / step).iterdir()), "the killed attempt left no staging folder"

    code, out = run_driver(store, log, steps=steps)
    assert code == 0, out[-4000:]
    outputs = published(store, step)
    assert len(outputs) == 1 and stray_folders(store, step) == []
    statuses = child_statuses(store)
    assert len(statuses) == 2
    assert statuses[0][step] == "killed"  # the rerun closed the dead driver's runs (KILLED in MLflow)
    assert statuses[1] == {**{up: "cached" for up in ancestors(step)}, step: "executed"}
    return outputs[0], statuses


def _reference(tiny_store: Path, step: str, folder: Path) -> Path:
    reference = tiny_store / "steps" / step / folder.name
    assert reference.is_dir(), f"the rerun made key {folder.name}, the uninterrupted run {published(tiny_store, step)}"
    return reference


# ingest_captions is the cheapest data step (about 45 s here) and stays in `make test`; download and
# aesthetic_filter (over a minute each) run with `make test-all`.
@pytest.mark.parametrize("step", [pytest.param("download", marks=pytest.mark.slow),
                                  pytest.param("aesthetic_filter", marks=pytest.mark.slow), "ingest_captions"])
def test_data_step_killed_mid_work_resumes_to_identical_output(step, tiny_store, seeded_store, tmp_path):
    store = seeded_store(ancestors(step))
    folder, _ = _kill_mid_step_then_rerun(store, step, tmp_path / "driver.log")
    digests = file_digests(folder)
    assert digests == file_digests(_reference(tiny_store, step, folder))  # bit-identical, file by file
    assert _data_metrics(folder) == _data_metrics(_reference(tiny_store, step, folder))
    if step == "download":
        assert len([p for p in digests if p.endswith(".tar")]) == read_manifest(folder).metrics["shards"]


@pytest.mark.slow
def test_training_step_killed_after_a_checkpoint_resumes_from_it(tiny_store, seeded_store, tmp_path):
    step = "train_stage1"
    store = seeded_store(ancestors(step))
    folder, _ = _kill_mid_step_then_rerun(store, step, tmp_path / "driver.log")
    metrics = read_manifest(folder).metrics
    reference = read_manifest(_reference(tiny_store, step, folder)).metrics
    assert metrics["steps"] == reference["steps"]  # trained to the same final step ...
    assert "resumed_from_step" not in reference
    assert 0 < metrics["resumed_from_step"] <= metrics["steps"]  # ... continuing from the killed run's checkpoint
    assert metrics["resumed_from_step"] % read_manifest(folder).config["loop"]["checkpoint_every"] == 0
    assert (folder / STAGE1_WEIGHTS).is_file()
    # The run that published the output holds the whole curve: the killed run's steps were carried over.
    from vlv.tracking import metric_history

    losses = metric_history(f"sqlite:///{store / 'mlflow.db'}", read_manifest(folder).mlflow_run_id, "loss")
    assert [s for s, _ in losses] == list(range(1, int(metrics["steps"]) + 1))


@pytest.mark.slow
def test_eval_step_killed_mid_work_gives_the_same_metrics(tiny_store, seeded_store, tmp_path):
    step = "caption_eval"
    store = seeded_store(ancestors(step))
    folder, _ = _kill_mid_step_then_rerun(store, step, tmp_path / "driver.log")
    assert _data_metrics(folder) == _data_metrics(_reference(tiny_store, step, folder))
    assert file_digests(folder) == file_digests(_reference(tiny_store, step, folder))
