"""The tiny VLV stage-1 model on webdataset shards, through the TrainTask protocol.

Training it under Ray Train (both ZeRO stages, resume, a killed worker) is in test_ray_training.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from vlv.models.config import Stage1ModelConfig
from vlv.testing.tiny_training import tiny_stage1_task
from vlv.train.data import ImageStreamConfig, WebDatasetImageStream
from vlv.train.stage_tasks import Stage1Task


@pytest.fixture(scope="module")
def stage1_task(tmp_path_factory) -> Stage1Task:
    return tiny_stage1_task(tmp_path_factory.mktemp("stage1-task"))


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
