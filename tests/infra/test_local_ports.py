"""infra/local's scripts refuse a port in Ray's worker range before starting anything, saying why."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "infra" / "local" / "lib.sh"


def _script(name: str, env: dict[str, str], state_dir: Path) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "VLV_LOCAL_STATE_DIR": str(state_dir), **env}
    return subprocess.run(["bash", str(REPO / "infra" / "local" / name), "start"], env=full_env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("script", "variable", "port"), [
    ("ray_head.sh", "VLV_RAY_CLIENT_PORT", 10011),
    ("ray_head.sh", "VLV_RAY_DASHBOARD_PORT", 19999),
    ("mlflow_server.sh", "VLV_MLFLOW_PORT", 10002),
])
def test_a_port_in_rays_worker_range_is_refused_with_the_reason(tmp_path, script, variable, port):
    done = _script(script, {variable: str(port)}, tmp_path / "state")
    assert done.returncode == 1
    assert f"{variable}={port} lies in Ray's worker port range 10002-19999: Ray hands those ports to its worker " \
           f"processes" in done.stderr
    assert "port in use?" not in done.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was created or started


def test_a_service_that_dies_at_start_is_reported_with_the_error_line_of_its_log(tmp_path):
    """What `svc_wait_ready` says when the process exits first: the error its log names, not a guess."""
    log = tmp_path / "service.log"
    log.write_text("starting\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "ValueError: Ray component worker_ports is trying to use a port number 10011 that is used by "
                   "other components.\nPort information: {...}\n")
    script = (f'source "{LIB}"; STATE_DIR="{tmp_path}"; never() {{ return 1; }}; '
              f'svc_wait_ready demo 999999999 10 "{log}" never')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert ("demo exited before it came up: ValueError: Ray component worker_ports is trying to use a port number "
            "10011 that is used by other components.; log: ") in done.stderr
    log.write_text("nothing useful\n")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert "exited before it came up: no error line in its log (its last lines are above)" in done.stderr
