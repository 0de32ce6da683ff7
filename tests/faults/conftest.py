"""Fixtures of the fault tests: stores seeded from the shared tiny run, the session Ray's address, cleanup."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from vlv.testing.driver_faults import copy_outputs, stop_started_drivers


@pytest.fixture(autouse=True)
def _no_driver_outlives_its_test() -> Iterator[None]:
    """A failed assertion must not leave a pipeline driver (and its Ray) running: kill them by pid."""
    yield
    stop_started_drivers()


@pytest.fixture
def seeded_store(tiny_store, tmp_path) -> Callable[[tuple[str, ...]], Path]:
    """A new store holding the shared tiny run's outputs of the given steps (so they are cached there)."""

    def make(steps: tuple[str, ...]) -> Path:
        store = tmp_path / "store"
        store.mkdir()
        copy_outputs(tiny_store, store, steps)
        return store

    return make


@pytest.fixture
def cluster_env(ray_session) -> dict[str, str]:
    """Environment that makes a driver subprocess join the session's Ray (as `ray job submit` drivers do),
    instead of starting its own: two embedded Rays starting at once can miss Ray's fixed 30 s startup limit
    on a loaded machine."""
    import ray

    return {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
