"""What the two training steps share: one base class (`TrainingStep`: their declared work, their preflight, the
Ray Train run), and how a training run is reported (a log line saying what was really trained, the step's
metrics).

A training section has a `model` (with `check_weights`), a `deepspeed`, a `loop` and a `ray_train` section; the
step's worker pool is the Ray Train worker group `ray_train` describes, and `run_training` starts exactly that
group, so what the plan, the cost estimate and the cluster preflight read is what trains.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from vlv.engine.step import Resources, Step, StepContext, WorkerPool
from vlv.train.deepspeed_config import DeepSpeedConfig, describe_schedule
from vlv.train.loop import LoopConfig
from vlv.train.ray_trainer import RayTrainConfig, TrainingOutcome, deepspeed_setup, run_training


class TrainingModel(Protocol):
    """A model config that can say, before any work starts, which pretrained weights are missing."""

    def check_weights(self, prefix: str = ...) -> None: ...


class TrainingSection(Protocol):
    """The fields every training step's config section has."""

    model: TrainingModel  # Stage1ModelConfig or CaptionerConfig
    deepspeed: DeepSpeedConfig
    loop: LoopConfig
    ray_train: RayTrainConfig


TrainingSectionT = TypeVar("TrainingSectionT", bound=TrainingSection)


class TrainingStep(Step[TrainingSectionT]):
    """Base of `train_stage1` and `train_stage2`: subclasses set the class attributes and implement `run`, which
    builds its stage task and calls `self.train`."""

    # DeepSpeed checkpoints live in the step's scratch space: a rerun after a crash continues from the last one.
    resumable = True
    system_metrics = True

    def resources(self, config: TrainingSectionT) -> Resources:
        # The step's own task starts Ray Train, waits for it, then writes small samples (a reconstruction grid,
        # caption samples) with what its node has spare: the training itself runs on the declared workers.
        return Resources(num_cpus=0)

    def worker_pools(self, config: TrainingSectionT) -> tuple[WorkerPool, ...]:
        return (train_worker_pool(config.ray_train),)

    def preflight(self, config: TrainingSectionT) -> None:
        config.model.check_weights(f"{self.name}.model")
        # Fails here, before any step runs, on a batch, precision or lr schedule the worker group cannot run.
        deepspeed_setup(config.deepspeed, loop=config.loop, ray_train=config.ray_train)

    def train(self, ctx: StepContext[TrainingSectionT], task: Any) -> TrainingOutcome:
        """Run `task` (a stage task of vlv.train.stage_tasks) on the declared Ray Train workers; the trained
        weights are exported into the output folder (vlv.train.loop.EXPORT_FILE)."""
        cfg = ctx.config
        ctx.log.debug("lr schedule: %s",
                      describe_schedule(cfg.deepspeed.schedule, loop_total_steps=cfg.loop.total_steps))
        outcome = run_training(task=task, deepspeed=cfg.deepspeed, loop=cfg.loop, ray_train=cfg.ray_train,
                               storage_path=f"{ctx.scratch_uri}/ray", name="ray_train", metric_logger=ctx.metrics,
                               export_dir=ctx.output_dir)
        ctx.log.info("%s; final loss %.5f", describe_training(outcome), outcome.metrics.get("loss", float("nan")))
        return outcome


def train_worker_pool(ray_train: RayTrainConfig) -> WorkerPool:
    """The Ray Train worker group, placed all at once (a placement group of `num_workers` bundles)."""
    return WorkerPool("Ray Train worker", "train_workers", ray_train.num_workers, ray_train.cpus_per_worker,
                      ray_train.gpus_per_worker if ray_train.use_gpu else 0.0, gang=True)


def describe_training(outcome: TrainingOutcome) -> str:
    """What the training run really did, in words (a resumed run does not train the steps before it)."""
    start = outcome.resumed_from_step
    if start is None:
        return f"trained steps 1..{outcome.steps} from scratch"
    if start >= outcome.steps:
        return f"found the finished run of this attempt (step {outcome.steps}) in scratch: trained no new step"
    return f"resumed from the checkpoint at step {start}: trained steps {start + 1}..{outcome.steps}"


def training_metrics(outcome: TrainingOutcome) -> dict[str, float]:
    metrics = {"steps": float(outcome.steps), "final_loss": float(outcome.metrics.get("loss", float("nan")))}
    if outcome.resumed_from_step is not None:
        metrics["resumed_from_step"] = float(outcome.resumed_from_step)
    if outcome.rank_stats:
        metrics["optimizer_state_bytes_per_rank"] = float(
            sum(s.optimizer_state_bytes for s in outcome.rank_stats) / len(outcome.rank_stats))
    return metrics
