"""Shared fixtures: one Ray instance for the whole session, and one tiny pipeline run shared by e2e tests."""

from __future__ import annotations

import os

import pytest

from vlv.runtime_env import apply_runtime_defaults

apply_runtime_defaults()
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("VLV_STORE", None)


@pytest.fixture(scope="session")
def ray_session():
    """An embedded Ray for the session; steps run as Ray tasks on it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    yield
    ray.shutdown()
