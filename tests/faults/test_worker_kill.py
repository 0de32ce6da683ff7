"""A step's Ray task lost with its worker process (as when its node dies): Ray reruns the task, and the rerun
continues from what the attempt left (the download's finished shards), giving the uninterrupted run's output."""

from __future__ import annotations

import os
import signal

import psutil

from vlv.testing.driver_faults import (
    ancestors,
    child_statuses,
    descendants,
    file_digests,
    published,
    shard_finished,
    start_driver,
    wait_for,
)

REACH_TIMEOUT_S = 1800.0  # a hang guard only


def _step_worker(driver, step: str) -> psutil.Process | None:
    for proc in descendants(driver.pid):
        try:
            if f"ray::vlv:{step}" in " ".join(proc.cmdline()):
                return proc
        except psutil.NoSuchProcess:
            continue
    return None


def test_a_download_task_killed_mid_work_is_rerun_by_ray_and_resumes(tiny_store, seeded_store, tmp_path):
    step = "download"
    store = seeded_store(ancestors(step))
    driver = start_driver(store, tmp_path / "driver.log", steps=(*ancestors(step), step))
    worker = wait_for(driver, lambda: shard_finished(driver) and _step_worker(driver, step), REACH_TIMEOUT_S)
    assert worker, driver.log()[-4000:]
    victim = _step_worker(driver, step)
    os.kill(victim.pid, signal.SIGKILL)  # the task's process dies; the driver and its Ray live on
    assert driver.proc.wait() == 0, driver.log()[-4000:]
    log = driver.log()
    assert log.count("running step download (key") == 2, "Ray did not rerun the lost task"
    assert "already finished by an earlier attempt; continuing" in log  # the rerun resumed the shards
    outputs = published(store, step)
    reference = tiny_store / "steps" / step / outputs[0].name
    assert file_digests(outputs[0]) == file_digests(reference)
    assert child_statuses(store)[-1] == {"prepare_metadata": "cached", "download": "executed"}
