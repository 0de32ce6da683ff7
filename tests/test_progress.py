"""Rate and ETA wording of progress lines, and the training step line built on it."""

from __future__ import annotations

import logging

import pytest

from vlv.progress import eta_seconds, eta_text, format_duration, rate_and_eta
from vlv.train.loop import StepStats, log_step


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (12.4, "12s"), (59.6, "1m00s"), (185, "3m05s"),
                                                (7620, "2h07m"), (3 * 86_400 + 4 * 3600 + 59, "3d04h")])
def test_durations_read_in_two_units_at_most(seconds, text):
    assert format_duration(seconds) == text


def test_eta_is_the_work_left_at_the_rate_so_far():
    assert eta_seconds(25, 100, 10.0) == pytest.approx(30.0)
    assert eta_text(25, 100, 10.0) == "ETA 30s"
    assert eta_text(0, 100, 10.0) == "ETA n/a" and eta_text(5, 0, 10.0) == "ETA n/a"
    assert rate_and_eta(30, 90, 20.0, "images") == "1.50 images/s, ETA 40s"


class _Recorder:
    def __init__(self) -> None:
        self.points: list[tuple[str, float, int | None]] = []

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        self.points.append((name, value, step))


def test_training_step_line_has_step_of_total_loss_lr_rate_and_eta(caplog):
    recorder = _Recorder()
    stats = StepStats(loss=0.25, lr=1e-4, grad_norm=None)
    with caplog.at_level(logging.INFO, logger="vlv.train"):
        log_step(recorder, 40, stats, samples_per_s=8.0, total_steps=100, global_batch=16)
    line = caplog.records[-1].getMessage()
    # 60 steps left x 16 samples at 8 samples/s = 120 s
    assert line == "step 40/100 loss 0.25000 lr 0.0001 grad_norm n/a samples/s 8.0 ETA 2m00s"
    assert ("loss", 0.25, 40) in recorder.points and ("samples_per_s", 8.0, 40) in recorder.points
    with caplog.at_level(logging.INFO, logger="vlv.train"):
        log_step(None, 100, stats, samples_per_s=8.0, total_steps=100, global_batch=16)
    assert caplog.records[-1].getMessage().endswith("samples/s 8.0 ETA 0s")
