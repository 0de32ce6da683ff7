"""What the two training steps share: their Ray Train worker pool, and how a training run is reported (a log
line saying what was really trained, and the step's metrics).
"""

from __future__ import annotations

from vlv.engine.step import WorkerPool
from vlv.train.ray_trainer import RayTrainConfig, TrainingOutcome


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
