"""Credentials in the environment never reach MLflow, the store, artifacts or logs; services stay on loopback.

`tests/conftest.py` sets fake Gemini, Google, AWS and HF credentials before Ray starts, so the shared tiny run
(and every Ray worker it starts) has them in its environment. After that run, every byte it wrote is scanned
for the exact values: the store (outputs, manifests, scratch checkpoints, MLflow's SQLite file and artifacts),
the driver log, and the Ray session's logs (step tasks, Ray Train workers).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from vlv.secrets import MASK, RedactingFilter, redact, secret_values
from vlv.testing.fake_secrets import FAKE_SECRETS
from vlv.testing.sockets import LOOPBACK, listening_addresses


def _files_containing_secrets(root: Path) -> list[str]:
    needles = [value.encode() for value in FAKE_SECRETS.values()]
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            data = path.read_bytes()
        except OSError:
            continue  # a socket or a file removed while scanning
        found += [f"{path}: {needle.decode()[:12]}..." for needle in needles if needle in data]
    return found


def _ray_session_dir() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path())


def test_fake_credentials_are_set_and_recognised():
    for name, value in FAKE_SECRETS.items():
        assert os.environ[name] == value
        assert value in secret_values(), f"{name} is not recognised as a credential"


def test_no_credential_in_store_mlflow_artifacts_or_logs_after_a_run(tiny_store):
    from mlflow.tracking import MlflowClient

    assert (tiny_store / "mlflow.db").is_file() and (tiny_store.parent / "driver.log").stat().st_size > 0
    leaks = _files_containing_secrets(tiny_store.parent)  # store + driver.log
    leaks += _files_containing_secrets(_ray_session_dir() / "logs")
    assert leaks == [], "credentials leaked into:\n" + "\n".join(leaks)

    client = MlflowClient(f"sqlite:///{tiny_store / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("vlv").experiment_id])
    assert len(runs) >= 10
    for run in runs:
        text = repr(run.data.params) + repr(run.data.tags)
        assert not any(value in text for value in FAKE_SECRETS.values()), run.info.run_name


def test_a_credential_in_a_config_value_or_error_is_masked_in_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from vlv.tracking import PipelineTracking

    secret = FAKE_SECRETS["HF_TOKEN"]
    tracking = PipelineTracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "vlv", str(tmp_path / "artifacts"))
    parent = tracking.start_parent(tags={"vlv.store": f"s3://bucket?token={secret}"},
                                   params={"model": {"path": f"https://hub/{secret}/weights"}})
    child = tracking.start_child("download", "abc", "/store/steps/download/abc", {"url": secret})
    tracking.finish_child(child, "failed", None, None, error=f"403 for https://x/?key={secret}")
    client = MlflowClient(tracking.tracking_uri)
    parent_run, child_run = client.get_run(parent), client.get_run(child)
    assert parent_run.data.params["model.path"] == f"https://hub/{MASK}/weights"
    assert parent_run.data.tags["vlv.store"] == f"s3://bucket?token={MASK}"
    assert child_run.data.params["url"] == MASK
    assert child_run.data.tags["vlv.error"] == f"403 for https://x/?key={MASK}"
    assert secret not in (tmp_path / "mlflow.db").read_bytes().decode("latin-1")


def test_log_lines_and_tracebacks_are_redacted(tmp_path):
    secret = FAKE_SECRETS["GEMINI_API_KEY"]
    handler = logging.FileHandler(tmp_path / "out.log")
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("vlv.test_secrets")
    logger.addHandler(handler)
    try:
        logger.warning("calling https://generativelanguage.googleapis.com/?key=%s", secret)
        try:
            raise RuntimeError(f"HTTP 400 for key {secret}")
        except RuntimeError:
            logger.exception("request failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    written = (tmp_path / "out.log").read_text()
    assert secret not in written
    assert written.count(MASK) == 2 and "RuntimeError: HTTP 400 for key ***" in written


@pytest.mark.parametrize("text", ["no secret here", "", "key=value"])
def test_redact_leaves_ordinary_text_alone(text):
    assert redact(text) == text


def test_embedded_ray_and_everything_this_process_starts_listen_on_loopback_only(ray_session):
    addresses = listening_addresses(os.getpid())  # the test process, its embedded Ray and their children
    assert addresses, "the embedded Ray listens somewhere"
    assert {ip for ip, _ in addresses} <= LOOPBACK, addresses
