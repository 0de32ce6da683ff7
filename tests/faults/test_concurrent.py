"""Two pipeline invocations on one store at once: one produces each step key, the other finds it cached or
refuses naming the run that holds it; MLflow's SQLite database takes both; the output verifies."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from vlv.testing.driver_faults import (
    child_statuses,
    file_digests,
    lock_holder,
    published,
    start_driver,
    wait_for,
)
from vlv.testing.gated_pipeline import EXPERIMENT, PREFLIGHT_GATE_ENV

HANG_GUARD_S = 1800.0


def _gated(store: Path, tmp_path: Path, name: str, hold: Path, env: dict[str, str]):
    command = [sys.executable, "-m", "vlv.testing.gated_pipeline", "--store", str(store), "--hold-file", str(hold),
               "--counter-dir", str(tmp_path)]
    return start_driver(store, tmp_path / f"{name}.log", command=command, env=env)


def _runs(counter_dir: Path) -> int:
    path = counter_dir / "slow.runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow  # about a minute: a gated pipeline held open by the test
def test_second_invocation_refuses_a_step_the_first_is_producing(tmp_path, cluster_env):
    store, hold = tmp_path / "store", tmp_path / "release"
    first = _gated(store, tmp_path, "first", hold, cluster_env)
    assert wait_for(first, lambda: (lock_holder(store, "slow") or {}).get("pid") == first.pid, HANG_GUARD_S), \
        first.log()[-3000:]
    second = _gated(store, tmp_path, "second", hold, cluster_env)
    assert second.proc.wait() == 2, second.log()[-3000:]
    owner = lock_holder(store, "slow")["owner"]
    assert re.search(rf"error: step 'slow' \(key \w+\) is being produced by run {owner} \(pid {first.pid} ",
                     second.log()), second.log()[-3000:]
    hold.touch()
    assert first.proc.wait() == 0, first.log()[-3000:]
    assert f"outcome slow executed parent={owner}" in first.log()

    third = _gated(store, tmp_path, "third", hold, cluster_env)
    assert third.proc.wait() == 0, third.log()[-3000:]
    assert "outcome slow cached" in third.log()
    assert _runs(tmp_path) == 1
    statuses = [s.get("slow") for s in child_statuses(store, EXPERIMENT)]
    assert statuses == ["executed", "failed"]  # first, refused second; the fully cached third opens no run
    assert "database is locked" not in first.log() + second.log() + third.log()


@pytest.mark.slow  # about a minute: a gated pipeline held open by the test
def test_step_published_by_another_invocation_after_planning_is_taken_as_cached(tmp_path, cluster_env):
    """B plans `slow` as "run", A publishes it before B takes the lock: B must not run it again."""
    store, hold, gate = tmp_path / "store", tmp_path / "release", tmp_path / "gate"
    hold.touch()
    late = _gated(store, tmp_path, "late", hold, {**cluster_env, PREFLIGHT_GATE_ENV: str(gate)})
    assert wait_for(late, lambda: "slow  run" in late.log(), HANG_GUARD_S), late.log()[-3000:]  # B has planned
    early = _gated(store, tmp_path, "early", hold, cluster_env)
    assert early.proc.wait() == 0, early.log()[-3000:]
    assert "outcome slow executed" in early.log() and published(store, "slow")
    gate.touch()
    assert late.proc.wait() == 0, late.log()[-3000:]
    assert "published by another invocation while this one planned; cached" in late.log()
    assert "outcome slow cached" in late.log()
    assert _runs(tmp_path) == 1


def test_two_real_invocations_at_once_on_a_new_store(tiny_store, tmp_path, cluster_env):
    """The same `full_run.py --steps prepare_metadata` twice at once on an empty store (MLflow DB created by both)."""
    store = tmp_path / "store"
    drivers = [start_driver(store, tmp_path / f"{name}.log", steps=["prepare_metadata"], env=cluster_env)
               for name in ("a", "b")]
    codes = [d.proc.wait() for d in drivers]
    logs = [d.log() for d in drivers]
    assert all(code in (0, 2) for code in codes) and 0 in codes, logs
    assert not any("database is locked" in log or "Traceback" in log for log in logs), logs
    statuses = [s["prepare_metadata"] for s in child_statuses(store)]
    # the other one found it cached when planning (then it opens no MLflow run), took it as cached under the
    # lock, or was refused while the first held it
    assert sorted(statuses) in (["executed"], ["cached", "executed"], ["executed", "failed"]), statuses
    for code, log in zip(codes, logs):
        if code == 2:  # refused while the other held the step: the message names the other run
            assert re.search(r"is being produced by run \w{32} \(pid \d+ ", log), log[-3000:]
    outputs = published(store, "prepare_metadata")
    assert len(outputs) == 1
    assert file_digests(outputs[0]) == file_digests(tiny_store / "steps" / "prepare_metadata" / outputs[0].name)
    assert not (store / ".locks" / f"prepare_metadata-{outputs[0].name}.lock").exists()
