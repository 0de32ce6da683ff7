"""Builders for tests and benchmarks: sample captions and images, trained-model folders of the tiny models, and
published step outputs, made with the project's real writers and its real executor.

`publish_output` turns a folder-building function into a published step output (manifest and all), so a step
under test reads exactly what its upstream step would publish; `run_step` runs a step through the executor
without a Ray task around it. The model folders hold untrained (seeded random) weights: tests that use them check
plumbing and values that do not depend on training.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vlv.engine.executor import StepRequest, execute_step
from vlv.engine.manifest import Manifest, list_files
from vlv.engine.step import Step, StepOutput
from vlv.engine.store import RunStore
from vlv.models.config import CaptionerConfig, Stage1ModelConfig
from vlv.models.trained_folder import load_caption_embedder, save_captioner_checkpoint, save_stage1_checkpoint

if TYPE_CHECKING:  # torch is imported where used
    import torch

# Captions to train a tiny BPE tokenizer on, and to tokenize in the model tests.
CAPTIONS = [
    "A red car is parked on a quiet street. The sky above it is blue.",
    "Two dogs play in a green park. One dog is brown and the other is white.",
    "A bowl of fruit sits on a wooden table. Apples and oranges fill the bowl.",
    "A lighthouse stands on a rocky coast at sunset. Waves break on the rocks.",
] * 8


def uint8_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """`count` seeded random uint8 images (count, size, size, 3), the layout the data loader gives the models."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=generator)


def publish_output(store: RunStore, step: str, key: str, build: Callable[[Path], None], *,
                   metrics: dict[str, float] | None = None, config: dict[str, Any] | None = None,
                   mlflow_run_id: str | None = None) -> StepOutput:
    """Publish what `build` writes into a staging folder as `step`'s output under `key`, with its manifest."""
    staging = store.prepare_staging(step, key, keep_existing=False)
    build(staging)
    manifest = Manifest(step=step, key=key, code_version="1", config=config or {}, upstream={},
                        files=list_files(staging), metrics=dict(metrics or {}),
                        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), duration_s=1.5,
                        mlflow_run_id=mlflow_run_id)
    store.publish(staging, manifest)
    return StepOutput(step, key, store.output_uri(step, key), manifest)


def write_stage1_folder(folder: Path) -> None:
    """A stage-1 model folder of the seeded, untrained tiny encoder (what train_stage1 publishes)."""
    from safetensors.torch import save_file

    from vlv.models.vlv_stage1 import build_caption_embedder

    cfg = Stage1ModelConfig.tiny()
    weights = folder / "trainable.safetensors"
    state = build_caption_embedder(cfg).trainable_state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    save_stage1_checkpoint(folder, cfg, weights)
    weights.unlink()


def write_captioner_folder(folder: Path, stage1_dir: Path) -> None:
    """A captioner folder (what train_stage2 publishes) on top of `stage1_dir`, with a BPE trained on CAPTIONS."""
    from safetensors.torch import save_file

    from vlv.models.captioner import build_caption_tokenizer, build_captioner

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
                          upstream_keys={name: out.key for name, out in inputs.items()}, inputs=inputs,
                          store_uri=store.uri, tracking_uri=tracking_uri, mlflow_run_id=mlflow_run_id,
                          on_cluster=False)
    manifest = execute_step(request)
    return StepOutput(step.name, key, store.output_uri(step.name, key), manifest)


def published_outputs(store: Path, steps: list[str]) -> dict[str, Path]:
    """The one published output folder of each step in a local store (end-to-end tests of one run per store)."""
    found = {}
    for step in steps:
        keys = RunStore(str(store)).published_keys(step)
        assert len(keys) == 1, f"{step}: expected one published output, found {keys}"
        found[step] = store / "steps" / step / keys[0]
    return found
