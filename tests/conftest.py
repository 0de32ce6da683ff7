"""Shared fixtures: one Ray instance for the whole session, and one tiny pipeline run shared by e2e tests."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from vlv.runtime_env import apply_runtime_defaults

apply_runtime_defaults()
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("VLV_STORE", None)

# Fake credentials, set before Ray starts so every worker inherits them too: after the shared tiny run,
# tests/test_secrets.py scans MLflow, the store, the artifacts and the logs for these exact strings.
FAKE_SECRETS = {
    "GEMINI_API_KEY": "fake-gemini-AIzaSyD3adb33fCaf3-0123456789abcdef",
    "GOOGLE_API_KEY": "fake-google-AIzaSyC0ffeeC0ffee-fedcba9876543210",
    "AWS_ACCESS_KEY_ID": "AKIAFAKE7EXAMPLE0KEY",
    "AWS_SECRET_ACCESS_KEY": "fake/aws+Secret0Key1Never2Logged3Anywhere4",
    "HF_TOKEN": "hf_fakeTokenNeverLoggedAnywhere0123456789",
}
os.environ.update(FAKE_SECRETS)


@pytest.fixture(scope="session")
def ray_session():
    """An embedded Ray for the session; steps run as Ray tasks on it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_store(ray_session, tmp_path_factory) -> Path:
    """The whole tiny pipeline, run once through the CLI entry point; its driver log is kept beside the store."""
    from pipelines import full_run

    root = tmp_path_factory.mktemp("tiny_run")
    handler = logging.FileHandler(root / "driver.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)  # pytest's own handlers are already there, so basicConfig sets nothing
    try:
        assert full_run.main(["--preset", "tiny", "--store", str(root / "store")]) == 0
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
        handler.close()
    return root / "store"
