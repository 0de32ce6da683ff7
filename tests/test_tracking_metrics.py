"""MlflowMetricLogger keeps a metric series free of duplicate steps across worker restarts (no Ray needed)."""

from __future__ import annotations

import pickle

import pytest

from vlv.tracking import MlflowMetricLogger, metric_history


@pytest.fixture()
def run(tmp_path) -> tuple[str, str]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("metrics")).info.run_id
    return uri, run_id


def test_a_restarted_logger_skips_steps_already_in_the_run(run):
    uri, run_id = run
    first = MlflowMetricLogger(uri, run_id)
    shipped = pickle.dumps(first)  # what a replacement worker receives: no client, no cache
    for step in (1, 2, 3, 4):
        first.log_metric("loss", 10.0 - step, step)
    first.log_metric("loss", 99.0, 4)  # the same process repeating a step is skipped too

    replacement = pickle.loads(shipped)  # resumed from a checkpoint at step 2: recomputes 3 and 4, then goes on
    for step in (3, 4, 5, 6):
        replacement.log_metric("loss", 100.0 + step, step)
    replacement.log_metric("lr", 0.5, 3)  # a name with no history yet is logged from its first step

    assert metric_history(uri, run_id, "loss") == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0), (5, 105.0), (6, 106.0)]
    assert metric_history(uri, run_id, "lr") == [(3, 0.5)]


def test_metrics_without_a_step_are_always_logged(run):
    from mlflow.tracking import MlflowClient

    uri, run_id = run
    logger = MlflowMetricLogger(uri, run_id)
    logger.log_metric("gauge", 1.0)
    logger.log_metric("gauge", 2.0)
    values = sorted(m.value for m in MlflowClient(uri).get_metric_history(run_id, "gauge"))
    assert values == [1.0, 2.0]
