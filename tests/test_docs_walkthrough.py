"""docs/SCALING.md's object-store walk-throughs (S3 and GCS), run as written (with a free port for the server)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from vlv.testing.object_store import free_port

REPO = Path(__file__).resolve().parents[1]


def walkthrough(name: str) -> str:
    text = (REPO / "docs" / "SCALING.md").read_text()
    block = re.search(rf"<!-- walkthrough:{name}:start -->\n```bash\n(.*?)```\n<!-- walkthrough:{name}:end -->",
                      text, re.S)
    assert block, f"docs/SCALING.md lost its {name} walk-through block"
    return block.group(1)


def test_the_s3_walkthrough_runs_as_written(tmp_path):
    script = walkthrough("s3").replace("45100", str(free_port()))
    script = script.replace("/tmp/vlv-demo-mlflow.db", str(tmp_path / "mlflow.db"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING", "RAY_ADDRESS"))}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"prepare_metadata\s+executed", done.stdout), done.stdout[-2000:]
    assert re.search(r"prepare_metadata\s+\w{20}\s+\d{4}-\d\d-\d\dT\S+\s+[\d.]+ MB\s+\w+\s+\w+\s+yes", done.stdout), \
        done.stdout[-2000:]  # vlv status: the published output, its time, size, config, MLflow run, this config
    assert "1 published outputs intact" in done.stdout


@pytest.mark.slow  # a Ray start and one step, like the S3 one; the gs:// store itself is tested in tests/engine
def test_the_gcs_walkthrough_runs_as_written(tmp_path):
    script = walkthrough("gcs").replace("45200", str(free_port()))
    script = script.replace("/tmp/vlv-demo-gcs-mlflow.db", str(tmp_path / "mlflow.db"))
    script = script.replace("/tmp/vlv-fake-gcs.log", str(tmp_path / "fake-gcs.log"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STORAGE_EMULATOR_HOST", "GCSFS_", "MLFLOW_TRACKING", "RAY_ADDRESS"))}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"prepare_metadata\s+executed", done.stdout), done.stdout[-2000:]
    assert "1 published outputs intact in gs://vlv-demo/runs" in done.stdout, done.stdout[-2000:]
    assert "Could not determine bucket type" not in done.stderr  # gcsfs never asked Google's control plane
