"""docs/SCALING.md's object-store walk-through, run as written (with a free port for the S3 server)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

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
