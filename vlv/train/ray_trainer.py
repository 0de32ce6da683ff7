"""Ray Train set-up for the training steps: a `TorchTrainer` running `loop.train_worker` on N workers.

Fault tolerance at both levels, with Ray Train V2 semantics (Ray 2.60):
- a worker dies -> `FailureConfig(max_failures)` restarts the worker group, which resumes from the last
  reported checkpoint (`ray.train.get_checkpoint()` inside the workers);
- the driver dies -> rerunning with the same `RunConfig(name, storage_path)` restores the run: V2 reads the
  checkpoint-manager snapshot in `<storage_path>/<name>/` and hands its latest checkpoint to the new workers.
  (`TorchTrainer.restore`/`can_restore` and `resume_from_checkpoint` are deprecated in V2 and raise.)
So `name` must identify the training configuration (the step key does), and `storage_path` must survive the
driver (a folder inside the run store).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlv.engine.step import MetricLogger
from vlv.engine.storage import arrow_filesystem
from vlv.logs import is_verbose
from vlv.train.deepspeed_config import DeepSpeedConfig, DeepSpeedSetup
from vlv.train.loop import (
    EXPORT_FILE,
    PROGRESS_FILE,
    WORKER_STATS_DIR,
    LoopConfig,
    RankStats,
    TrainTask,
    WorkerSpec,
    train_worker,
)

if TYPE_CHECKING:  # Ray and pyarrow are imported where used
    import pyarrow.fs
    import ray.train

log = logging.getLogger("vlv.train")


@dataclass
class RayTrainConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # only used with use_gpu
    max_failures: int = 3  # worker-group restarts before the run fails (-1: unlimited)
    num_checkpoints_to_keep: int = 2

    def __post_init__(self) -> None:
        if self.num_workers <= 0:
            raise ValueError(f"ray_train.num_workers must be > 0, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"ray_train.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.use_gpu and self.gpus_per_worker <= 0:
            raise ValueError(f"ray_train.gpus_per_worker must be > 0 with use_gpu, got {self.gpus_per_worker}")
        if self.max_failures < -1:
            raise ValueError(f"ray_train.max_failures must be >= -1 (-1 = unlimited), got {self.max_failures}")
        if self.num_checkpoints_to_keep < 1:
            raise ValueError(f"ray_train.num_checkpoints_to_keep must be >= 1, got {self.num_checkpoints_to_keep}")


@dataclass
class TrainingOutcome:
    """What the driver learns from a finished run."""

    steps: int
    metrics: dict[str, float | bool]  # rank 0's metrics at the last checkpoint
    checkpoint_path: str  # the last checkpoint (a path on `checkpoint_filesystem`)
    exported_weights: Path | None  # local copy of the trainable weights, if `export_dir` was given
    rank_stats: list[RankStats] = field(default_factory=list)
    resumed_from_step: int | None = None


def deepspeed_setup(deepspeed: DeepSpeedConfig, *, loop: LoopConfig, ray_train: RayTrainConfig) -> DeepSpeedSetup:
    """The DeepSpeed settings of a training step's run on its Ray Train worker group; a batch, precision or
    schedule mistake raises here (a step's preflight calls this before any step runs)."""
    return DeepSpeedSetup(deepspeed, num_workers=ray_train.num_workers, on_gpu=ray_train.use_gpu,
                          loop_total_steps=loop.total_steps)


def run_training(*, task: TrainTask[Any], deepspeed: DeepSpeedConfig, loop: LoopConfig, ray_train: RayTrainConfig,
                 storage_path: str, name: str, metric_logger: MetricLogger | None = None,
                 export_dir: Path | None = None) -> TrainingOutcome:
    """Train `task` to `loop.total_steps` (resuming a run of the same `name` if one exists) and fetch results."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    # The same S3 endpoint for Ray Train's pyarrow filesystem as for the rest of the store (AWS_ENDPOINT_URL).
    storage_fs, storage_root = arrow_filesystem(storage_path)
    setup = deepspeed_setup(deepspeed, loop=loop, ray_train=ray_train)  # fails here, before any worker starts
    resources = {"CPU": ray_train.cpus_per_worker}
    if ray_train.use_gpu:
        resources["GPU"] = ray_train.gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"spec": WorkerSpec(task=task, deepspeed=setup, loop=loop, metric_logger=metric_logger)},
        torch_config=TorchConfig(backend="nccl" if ray_train.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=ray_train.num_workers, use_gpu=ray_train.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_root, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=ray_train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=ray_train.num_checkpoints_to_keep),
            # Ray Train's own INFO lines (worker group set-up, every checkpoint of every rank) only with --verbose
            logging_config=ray.train.LoggingConfig(log_level="INFO" if is_verbose() else "WARNING"),
        ),
    )
    log.info("training %s: %s, %d steps, storage %s", name, setup.describe(), loop.total_steps, storage_path)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} finished without a checkpoint in {storage_path}")
    return _outcome(result, export_dir)


def _outcome(result: ray.train.Result, export_dir: Path | None) -> TrainingOutcome:
    checkpoint = result.checkpoint
    fs, root = checkpoint.filesystem, checkpoint.path.rstrip("/")
    progress = json.loads(_read_text(fs, f"{root}/{PROGRESS_FILE}"))
    metrics = dict(result.metrics or {})
    exported = None
    if export_dir is not None:
        source = f"{root}/{EXPORT_FILE}"
        if fs.get_file_info(source).type.name == "NotFound":
            raise RuntimeError(f"the last checkpoint {root} has no {EXPORT_FILE}; it was not written at the final "
                               f"step (step {progress['step']})")
        export_dir.mkdir(parents=True, exist_ok=True)
        exported = export_dir / EXPORT_FILE
        with fs.open_input_stream(source) as src, open(exported, "wb") as dst:
            while chunk := src.read(1 << 24):
                dst.write(chunk)
    from pyarrow.fs import FileSelector

    stats: list[RankStats] = []
    for info in fs.get_file_info(FileSelector(f"{root}/{WORKER_STATS_DIR}", allow_not_found=True)):
        stats.append(RankStats(**json.loads(_read_text(fs, info.path))))
    resumed = metrics.get("resumed_from_step", -1)
    return TrainingOutcome(
        steps=int(progress["step"]), metrics=metrics, checkpoint_path=root, exported_weights=exported,
        rank_stats=sorted(stats, key=lambda s: s.rank),
        resumed_from_step=None if resumed is None or resumed < 0 else int(resumed),
    )


def _read_text(fs: pyarrow.fs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as handle:
        return handle.read().decode()
