"""The step lock after its holder is SIGKILLed: taken over at once, and the dead holder's attempt cannot publish."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vlv.engine.executor import StepRequest, execute_step
from vlv.engine.store import LockLostError, RunStore, StoreLockedError
from vlv.testing.toy_steps import Alpha, ToySection

HOLD = """
import sys, time
from vlv.engine.store import RunStore
with RunStore(sys.argv[1]).lock("alpha", "k", owner="doomed") as token:
    print(token, flush=True)
    time.sleep(3600)
"""


def _hold_in_child(store: Path) -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True)
    token = child.stdout.readline().strip()
    assert token, "the child did not take the lock"
    return child, token


def test_lock_of_a_killed_holder_is_taken_over_and_its_token_is_void(tmp_path):
    store = RunStore(str(tmp_path))
    child, dead_token = _hold_in_child(tmp_path)
    with pytest.raises(StoreLockedError, match=rf"being produced by run doomed \(pid {child.pid} "):
        with store.lock("alpha", "k", owner="second"):
            pass
    store.check_lock("alpha", "k", dead_token)  # still the holder's

    child.send_signal(signal.SIGKILL)
    child.wait()
    lock_file = tmp_path / ".locks" / "alpha-k.lock"
    assert json.loads(lock_file.read_text())["owner"] == "doomed"  # SIGKILL left the file behind ...
    with pytest.raises(LockLostError, match=r"run doomed .* is gone; this orphaned attempt's output is not"):
        store.check_lock("alpha", "k", dead_token)  # ... its token, but nobody holds the flock: no publish
    with store.lock("alpha", "k", owner="second") as token:  # ... but not the flock: taken over at once
        assert json.loads(lock_file.read_text())["owner"] == "second"
        store.check_lock("alpha", "k", token)
        with pytest.raises(LockLostError, match="no longer holds the step's lock .*run second"):
            store.check_lock("alpha", "k", dead_token)
    assert not lock_file.exists()


def test_an_orphaned_attempt_does_not_publish(tmp_path):
    """A worker that outlived its killed driver finishes the step after a new run took the key: no publish."""
    store = RunStore(str(tmp_path))
    with store.lock("alpha", "k", owner="new-run"):
        request = StepRequest(step=Alpha(), key="k", preset="tiny", section=ToySection(), upstream_keys={}, inputs={},
                              store_uri=str(tmp_path), tracking_uri=None,
                              mlflow_run_id=None, on_cluster=False, lock_token="token-of-the-killed-run")
        with pytest.raises(LockLostError, match="its output is not published"):
            execute_step(request)
    assert not store.is_published("alpha", "k")
    assert not (tmp_path / "steps").exists()


def test_mutex_serialises_invocations(tmp_path):
    """`RunStore.mutex` (MLflow DB creation) blocks a second holder until the first leaves."""
    store = RunStore(str(tmp_path))
    code = ("import sys, time, pathlib\nfrom vlv.engine.store import RunStore\n"
            "with RunStore(sys.argv[1]).mutex('m'):\n    print('in', flush=True)\n    time.sleep(2)\n"
            "    pathlib.Path(sys.argv[2]).touch()\n")
    leaving = tmp_path / "leaving"
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(leaving)], stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "in"
    with store.mutex("m"):
        assert leaving.exists()  # we got in only once the child was leaving its critical section
    assert child.wait() == 0
