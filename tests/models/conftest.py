"""Fixtures for the model tests: tiny models (seeded random weights). Sample captions and images:
`vlv.testing.builders`."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def tiny_stage1():
    """Shared read-only tiny stage-1 model (tests that train build their own)."""
    from vlv.models.config import Stage1ModelConfig
    from vlv.models.vlv_stage1 import build_stage1_model

    return build_stage1_model(Stage1ModelConfig.tiny())
