"""Session fixtures for the evaluation step tests: one store with fake training outputs and one caption_eval run.

Built once per session and only read by the tests (each step test publishes under its own key).
"""

from __future__ import annotations

import pytest

from vlv.engine.store import RunStore
from vlv.testing.builders import publish_output, run_step, write_captioner_folder, write_stage1_folder


@pytest.fixture(scope="session")
def eval_store(tmp_path_factory) -> RunStore:
    return RunStore(str(tmp_path_factory.mktemp("eval_store")))


@pytest.fixture(scope="session")
def stage1_output(eval_store):
    return publish_output(eval_store, "train_stage1", "s1fake", write_stage1_folder, metrics={"final_loss": 0.5})


@pytest.fixture(scope="session")
def stage2_output(eval_store, stage1_output):
    return publish_output(eval_store, "train_stage2", "s2fake",
                          lambda folder: write_captioner_folder(folder, stage1_output.local_dir),
                          metrics={"final_loss": 2.0})


@pytest.fixture(scope="session")
def caption_eval_output(ray_session, eval_store, stage2_output):
    """caption_eval on the tiny sets (8 caption-set photos, 28 + 11 VQA questions) with the fake captioner."""
    from vlv.steps.caption_eval import CaptionEvalConfig, CaptionEvalStep, VqaBenchmarkConfig

    config = CaptionEvalConfig(tiny_sets=True, vqa=[VqaBenchmarkConfig(name="tiny", exemplar_pool_size=0)],
                               batch_size=8, sample_rows=3)
    return run_step(eval_store, CaptionEvalStep(), config, {"train_stage2": stage2_output}, "ce0")
