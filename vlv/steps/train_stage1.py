"""Step `train_stage1`: train the VLV encoder against the frozen diffusion decoder (DeepSpeed ZeRO on Ray Train).

Images only, no captions: the kept images of `aesthetic_filter`, streamed from the `download` shards. The
published output is a stage-1 model folder (see vlv.models.trained_folder) plus a grid of originals beside what
the frozen diffusion model draws from their learned caption embeddings. DeepSpeed checkpoints live in the step's scratch
space in the store, so a rerun after a crash resumes from the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlv.config_tree import KEYED_WHEN_SET
from vlv.engine.step import StepContext, StepResult
from vlv.models.config import Stage1ModelConfig
from vlv.models.trained_folder import STAGE1_WEIGHTS, load_stage1, save_stage1_checkpoint
from vlv.steps.aesthetic_filter import KEPT
from vlv.steps.download import SHARDS
from vlv.steps.training_common import TrainingStep, training_metrics
from vlv.train.data import ImageStreamConfig, WebDatasetImageStream
from vlv.train.deepspeed_config import DeepSpeedConfig, stage1_official
from vlv.train.loop import EXPORT_FILE, LoopConfig
from vlv.train.ray_trainer import RayTrainConfig
from vlv.train.stage_tasks import Stage1Task


@dataclass
class TrainStage1Config:
    model: Stage1ModelConfig = field(default_factory=Stage1ModelConfig.paper)
    # The official schedule: DeepSpeed WarmupCosineLR over 20K steps, which cycles through the 200K-step loop.
    # The single cosine over the whole run: --set train_stage1.deepspeed.schedule.kind=cosine
    deepspeed: DeepSpeedConfig = field(default_factory=stage1_official)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(total_steps=200_000, checkpoint_every=2_000))
    ray_train: RayTrainConfig = field(default_factory=lambda: RayTrainConfig(num_workers=8, use_gpu=True))
    shuffle_buffer: int = 256
    # Train on this many of aesthetic_filter's kept images (the paper's data-scale ablation, 6M/18M/40M): a subset
    # fixed by the count and loop.seed, the smaller inside the larger (see vlv.train.image_subset). None: all.
    max_images: int | None = field(default=None, metadata=KEYED_WHEN_SET)
    grid_images: int = 4  # originals shown beside their reconstructions in MLflow
    grid_sampling_steps: int = 25
    grid_guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.grid_images < 0 or self.grid_sampling_steps <= 0:
            raise ValueError("train_stage1.grid_images must be >= 0 and grid_sampling_steps > 0")
        if self.shuffle_buffer < 0:
            raise ValueError(f"train_stage1.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"train_stage1.max_images must be >= 1, or null to train on every kept image; "
                             f"got {self.max_images}")


class TrainStage1Step(TrainingStep[TrainStage1Config]):
    name = "train_stage1"
    upstream = ("download", "aesthetic_filter")
    code_version = "2"  # 2: Florence pixels resized with PIL bicubic, as its image processor does
    description = "Train the VLV encoder through the frozen SD 2.1 decoder (DeepSpeed ZeRO on Ray Train)"

    def run(self, ctx: StepContext[TrainStage1Config]) -> StepResult:
        cfg = ctx.config
        stream = WebDatasetImageStream(
            shards_uri=ctx.input("download").path(SHARDS),
            samples_uri=ctx.input("aesthetic_filter").path(KEPT),
            config=ImageStreamConfig(image_size=cfg.model.image_size, shuffle_buffer=cfg.shuffle_buffer,
                                     seed=cfg.loop.seed, max_images=cfg.max_images),
        )
        images_used = count_images(stream, ctx.log)
        outcome = self.train(ctx, Stage1Task(stream=stream, model=cfg.model))
        (ctx.output_dir / EXPORT_FILE).rename(ctx.output_dir / STAGE1_WEIGHTS)
        save_stage1_checkpoint(ctx.output_dir, cfg.model, ctx.output_dir / STAGE1_WEIGHTS)

        artifacts = []
        if cfg.grid_images:
            images = first_images(stream, cfg.grid_images)
            model = load_stage1(ctx.output_dir)
            generated = model.generate_images(images, num_steps=cfg.grid_sampling_steps,
                                              guidance_scale=cfg.grid_guidance_scale, generator=seeded(cfg.loop.seed))
            save_image_grid([images.numpy(), generated.numpy()], ctx.output_dir / "reconstruction_grid.png",
                            title="top: originals; bottom: frozen SD decoder from learned caption embeddings")
            artifacts.append("reconstruction_grid.png")
        metrics = training_metrics(outcome)
        metrics["images_used"] = float(images_used)
        return StepResult(metrics=metrics, artifacts=artifacts)


def first_images(stream: Any, count: int) -> Any:
    """The first `count` images of a single-worker pass over the stream (uint8 tensor)."""
    batch = next(stream.batches(rank=0, world_size=1, batch_size=count, start_batch=0))
    return batch.images


def count_images(stream: Any, log: Any) -> int:
    """The images the stream trains on, logged (with the cap's warning when it exceeds what is kept). Under a cap
    this selects the subset here, once, and the stream carries it to the workers."""
    subset = stream.image_subset()
    used = sum(entry.num_samples for entry in stream.shard_entries())
    if subset is None:
        log.info("training on all %d kept images", used)
    elif subset.max_images > subset.available:
        log.warning("train_stage1.max_images=%d exceeds the %d images aesthetic_filter kept: training on all %d",
                    subset.max_images, subset.available, used)
    else:
        log.info("training on %d of the %d kept images (train_stage1.max_images, seed %d)", used,
                 subset.available, subset.seed)
    return used


def seeded(seed: int) -> Any:
    import torch

    return torch.Generator().manual_seed(seed)


def save_image_grid(rows: list[Any], path: Path, title: str = "") -> None:
    """Rows of uint8 (N, H, W, 3) arrays -> one PNG, rows stacked vertically with a thin white gap."""
    import numpy as np
    from PIL import Image

    gap = 2
    height, width = rows[0].shape[1], rows[0].shape[2]
    columns = max(len(r) for r in rows)
    canvas = np.full(((height + gap) * len(rows), (width + gap) * columns, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            top, left = r * (height + gap), c * (width + gap)
            canvas[top:top + height, left:left + width] = image
    picture = Image.fromarray(canvas)
    if title:
        picture.info["Title"] = title
    picture.save(path)
