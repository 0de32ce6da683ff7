"""The tiny VLV stage-1 model on webdataset shards, through the TrainTask protocol and under Ray Train."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.train.shard_helpers import write_shards
from vlv.models.config import Stage1ModelConfig
from vlv.train.data import ImageStreamConfig, WebDatasetImageStream
from vlv.train.stage_tasks import Stage1Task


@pytest.fixture(scope="module")
def stage1_task(tmp_path_factory) -> Stage1Task:
    shards = write_shards(tmp_path_factory.mktemp("stage1-shards"), image_size=64)
    stream = WebDatasetImageStream(shards_uri=str(shards["dir"]), samples_uri=str(shards["dir"] / "kept.parquet"),
                                   config=ImageStreamConfig(image_size=64, shuffle_buffer=4, seed=0))
    return Stage1Task(stream=stream, model=Stage1ModelConfig.tiny())


def test_stage1_task_gives_a_finite_loss_on_stream_batches(stage1_task):
    torch.manual_seed(0)
    model = stage1_task.build_model()
    batch = next(stage1_task.batches(rank=0, world_size=2, batch_size=2, start_batch=0))
    assert batch.images.dtype == torch.uint8 and tuple(batch.images.shape) == (2, 64, 64, 3)
    loss = stage1_task.loss(model, batch, torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and math.isfinite(loss.item()) and loss.item() > 0
    model.eval()  # no dropout: the loss is then a pure function of (weights, batch, generator)
    first = stage1_task.loss(model, batch, torch.Generator().manual_seed(1)).item()
    assert stage1_task.loss(model, batch, torch.Generator().manual_seed(1)).item() == first
    assert stage1_task.loss(model, batch, torch.Generator().manual_seed(2)).item() != first


def test_image_size_mismatch_is_a_clear_error(stage1_task):
    stream = WebDatasetImageStream(shards_uri="unused", samples_uri="unused", config=ImageStreamConfig(image_size=32))
    with pytest.raises(ValueError, match="image_size=64"):
        Stage1Task(stream=stream, model=Stage1ModelConfig.tiny())


@pytest.mark.slow
def test_tiny_stage1_trains_under_ray_train_zero2(ray_session, stage1_task, tmp_path: Path):
    from safetensors.torch import load_file

    from vlv.models.vlv_stage1 import build_stage1_model
    from vlv.train.deepspeed_config import AdamWConfig, DeepSpeedConfig, LRScheduleConfig
    from vlv.train.loop import LoopConfig
    from vlv.train.ray_trainer import RayTrainConfig, run_training

    outcome = run_training(
        task=stage1_task,
        deepspeed=DeepSpeedConfig(zero_stage=2, precision="fp32", micro_batch_per_worker=2, global_batch=4,
                                  optimizer=AdamWConfig(lr=1e-3), schedule=LRScheduleConfig(total_steps=2)),
        loop=LoopConfig(total_steps=2, checkpoint_every=2, log_every=1, seed=0),
        ray_train=RayTrainConfig(num_workers=2, max_failures=0),
        storage_path=str(tmp_path / "ray_train"), name="tiny-stage1", export_dir=tmp_path / "export",
    )
    assert outcome.steps == 2 and math.isfinite(outcome.metrics["loss"])
    torch.manual_seed(0)
    initial = build_stage1_model(Stage1ModelConfig.tiny())
    exported = load_file(outcome.exported_weights)
    trainable = {name for name, p in initial.named_parameters() if p.requires_grad}
    assert set(exported) == trainable
    assert any(not torch.equal(exported[name], initial.state_dict()[name]) for name in exported)
    # frozen parts bit for bit: the DeepSpeed checkpoint's full module state has the same frozen fingerprint
    module_state = torch.load(Path(outcome.checkpoint_path) / "step_00000002" / "mp_rank_00_model_states.pt",
                              weights_only=False, map_location="cpu")["module"]
    trained = build_stage1_model(Stage1ModelConfig.tiny())
    trained.load_state_dict(module_state)
    assert trained.frozen_state_fingerprint() == initial.frozen_state_fingerprint()
    sharded = [s.optimizer_state_bytes for s in outcome.rank_stats]
    assert max(sharded) <= 0.55 * 8 * sum(p.numel() for p in initial.parameters() if p.requires_grad)
