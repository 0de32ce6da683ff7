"""Fake upstream outputs for the evaluation step tests: tiny random models exported with the real writers.

`publish_output` turns a folder-building function into a published step output (manifest and all), so the eval
steps read exactly what the training steps would publish. Untrained weights: the tests check plumbing and
values that do not depend on training.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any, Callable

from tests.models.conftest import CAPTIONS
from vlv.engine.executor import StepRequest, execute_step
from vlv.engine.manifest import Manifest, list_files
from vlv.engine.step import Step, StepOutput
from vlv.engine.store import RunStore


def publish_output(store: RunStore, step: str, key: str, build: Callable[[Path], None], *,
                   metrics: dict[str, float] | None = None, config: dict[str, Any] | None = None,
                   mlflow_run_id: str | None = None) -> StepOutput:
    staging = store.prepare_staging(step, key, keep_existing=False)
    build(staging)
    manifest = Manifest(step=step, key=key, code_version="1", config=config or {}, upstream={},
                        files=list_files(staging), metrics=dict(metrics or {}),
                        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), duration_s=1.5,
                        mlflow_run_id=mlflow_run_id)
    store.publish(staging, manifest)
    return StepOutput(step, key, store.output_uri(step, key), manifest)


def write_stage1_folder(folder: Path) -> None:
    from safetensors.torch import save_file

    from vlv.models.config import Stage1ModelConfig
    from vlv.models.trained_folder import save_stage1_checkpoint
    from vlv.models.vlv_stage1 import build_caption_embedder

    cfg = Stage1ModelConfig.tiny()
    weights = folder / "trainable.safetensors"
    state = build_caption_embedder(cfg).trainable_state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    save_stage1_checkpoint(folder, cfg, weights)
    weights.unlink()


def write_captioner_folder(folder: Path, stage1_dir: Path) -> None:
    from safetensors.torch import save_file

    from vlv.models.captioner import build_caption_tokenizer, build_captioner
    from vlv.models.config import CaptionerConfig
    from vlv.models.trained_folder import load_caption_embedder, save_captioner_checkpoint

    cfg = dataclasses.replace(CaptionerConfig.tiny(), max_new_tokens=12, num_beams=2)
    tokenizer = build_caption_tokenizer(cfg, CAPTIONS)
    captioner = build_captioner(cfg, load_caption_embedder(stage1_dir), tokenizer)
    weights = folder / "trainable.safetensors"
    save_file({name: p.detach().contiguous() for name, p in captioner.named_parameters() if p.requires_grad},
              str(weights))
    save_captioner_checkpoint(folder, stage1_dir, cfg, weights, tokenizer)
    weights.unlink()


def run_step(store: RunStore, step: Step, config: Any, inputs: dict[str, StepOutput], key: str, *,
             preset: str = "tiny", tracking_uri: str | None = None, mlflow_run_id: str | None = None) -> StepOutput:
    """Run a step through the real executor (no Ray task around it) and return its published output."""
    request = StepRequest(step=step, key=key, preset=preset, section=config,
                          section_dict=dataclasses.asdict(config),
                          upstream_keys={name: out.key for name, out in inputs.items()}, inputs=inputs,
                          store_uri=store.uri, tracking_uri=tracking_uri, mlflow_run_id=mlflow_run_id,
                          on_cluster=False)
    manifest = execute_step(request)
    return StepOutput(step.name, key, store.output_uri(step.name, key), manifest)
