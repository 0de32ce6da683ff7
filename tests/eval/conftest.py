"""Fixtures shared by the evaluation tests."""

from __future__ import annotations

import pytest

from vlv.eval.tiny_sets import TinyEvalSets, write_tiny_eval_sets


@pytest.fixture(scope="session")
def tiny_eval_sets(tmp_path_factory) -> TinyEvalSets:
    """The tiny evaluation sets, written once per session (tests only read them)."""
    return write_tiny_eval_sets(tmp_path_factory.mktemp("tiny_eval_sets"))
