"""The per-worker training function Ray Train runs: build, initialize DeepSpeed, load checkpoint, loop.

Reads top to bottom like torchtitan's `train()`:
    model = task.build_model()                 (same seed on every rank)
    engine = initialize_deepspeed(...)         (ZeRO stage, precision, batch sizes from a DeepSpeedSetup)
    progress = load_checkpoint(...)            (Ray Train's latest checkpoint, if this is a restart)
    for step in range(progress.step, total):  {train_step, log (rank 0), save + report every N steps}
    final checkpoint carries the exported trainable weights (safetensors, written by rank 0)

Determinism, so a resumed run equals an uninterrupted one: the data stream is a pure function of
(seed, rank, micro-batch index) and can start at any micro-batch; the global torch RNG is re-seeded from
(seed, rank, micro-batch index) before every forward pass (dropout, diffusion noise), so nothing random
depends on how many steps this process has already run.

Checkpoints: every rank writes its part of a DeepSpeed checkpoint (`engine.save_checkpoint`) into its own
temporary folder and hands it to `ray.train.report`, which merges the ranks' folders into one checkpoint in the
run store. On restart each rank loads the merged checkpoint with `engine.load_checkpoint`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, TypeVar

from vlv.engine.progress_board import publish
from vlv.engine.step import MetricLogger
from vlv.logs import configure_logging
from vlv.progress import format_duration
from vlv.runtime_env import apply_runtime_defaults
from vlv.train.deepspeed_config import DeepSpeedSetup, build_deepspeed_config, build_lr_scheduler_factory

if TYPE_CHECKING:  # torch, DeepSpeed and Ray are imported where used: they load slowly and set up devices
    import ray.train
    import torch
    from deepspeed import DeepSpeedEngine

log = logging.getLogger("vlv.train")

EXPORT_FILE = "trainable_weights.safetensors"
PROGRESS_FILE = "progress.json"
WORKER_STATS_DIR = "worker_stats"


BatchT = TypeVar("BatchT")


class TrainTask(Protocol[BatchT]):
    """What a training stage plugs into the loop (picklable: it travels to every Ray Train worker)."""

    def build_model(self) -> torch.nn.Module:
        """The full torch module with `requires_grad` already False on frozen parts."""

    def batches(self, *, rank: int, world_size: int, batch_size: int, start_batch: int) -> Iterator[BatchT]:
        """This rank's micro-batches of `batch_size`, endless, from micro-batch `start_batch` (deterministic)."""

    def loss(self, model: torch.nn.Module, batch: BatchT, generator: torch.Generator) -> torch.Tensor:
        """Scalar loss of `model` (the engine's module) on one micro-batch; draw noise from `generator`."""


@dataclass
class LoopConfig:
    total_steps: int = 1000  # optimizer steps
    checkpoint_every: int = 500  # optimizer steps between checkpoints; the last step is always saved
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.total_steps <= 0:
            raise ValueError(f"loop.total_steps must be > 0, got {self.total_steps}")
        if self.checkpoint_every <= 0:
            raise ValueError(f"loop.checkpoint_every must be > 0, got {self.checkpoint_every}")
        if self.log_every <= 0:
            raise ValueError(f"loop.log_every must be > 0, got {self.log_every}")


@dataclass
class WorkerSpec:
    """Everything `train_worker` needs; passed by Ray Train as `train_loop_config={"spec": spec}`."""

    task: TrainTask[Any]
    deepspeed: DeepSpeedSetup
    loop: LoopConfig
    metric_logger: MetricLogger | None = None  # used by rank 0 only


@dataclass
class TrainProgress:
    step: int = 0  # optimizer steps done
    samples_seen: int = 0  # global samples consumed
    resumed_from_step: int | None = None
    # The MLflow run that logged the steps up to the checkpoint: a resumed run copies that part of the curve.
    metrics_run_id: str | None = None


@dataclass
class StepStats:
    loss: float
    lr: float
    grad_norm: float | None


@dataclass
class RankStats:
    """Per-rank measurements written next to the final checkpoint (one small JSON per rank)."""

    rank: int
    optimizer_state_bytes: int
    trainable_params: int
    frozen_params: int


# -- the worker function -------------------------------------------------------------------------------------


def train_worker(config: dict[str, WorkerSpec]) -> None:
    """Ray Train's `train_loop_per_worker`."""
    apply_runtime_defaults()  # before torch and DeepSpeed load: they read the environment once
    import ray.train
    import torch

    spec = config["spec"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    configure_logging(f"%(asctime)s rank{rank} %(name)s: %(message)s")
    if world_size != spec.deepspeed.num_workers:
        raise RuntimeError(f"Ray Train started {world_size} workers but the DeepSpeed setup is for "
                           f"{spec.deepspeed.num_workers}")

    torch.manual_seed(spec.loop.seed)
    model = spec.task.build_model()
    engine = initialize_deepspeed(model, spec.deepspeed)
    engine.train()
    accumulation = engine.gradient_accumulation_steps()
    progress = load_checkpoint(engine, ray.train.get_checkpoint(), world_size=world_size)
    global_batch = spec.deepspeed.config.global_batch
    batches = spec.task.batches(rank=rank, world_size=world_size,
                                batch_size=spec.deepspeed.config.micro_batch_per_worker,
                                start_batch=progress.step * accumulation)
    metric_logger = spec.metric_logger if rank == 0 else None  # one writer per metric series
    if metric_logger is not None and progress.resumed_from_step:
        carry_curve_over(metric_logger, progress)

    window_start, window_steps = time.perf_counter(), 0
    loop_start, first_step = window_start, progress.step
    for step in range(progress.step, spec.loop.total_steps):
        stats = train_step(engine, spec.task, batches, seed=spec.loop.seed, rank=rank,
                           first_micro_batch=step * accumulation)
        progress.step, progress.samples_seen = step + 1, progress.samples_seen + global_batch
        window_steps += 1
        if rank == 0:  # the live status line on a terminal (does nothing elsewhere)
            publish("training", progress.step, spec.loop.total_steps, "steps", time.perf_counter() - loop_start,
                    done_before=first_step)
        if progress.step % spec.loop.log_every == 0 or progress.step == spec.loop.total_steps:
            elapsed = time.perf_counter() - window_start
            samples_per_s = window_steps * global_batch / max(elapsed, 1e-9)
            if rank == 0:
                log_step(metric_logger, progress.step, stats, samples_per_s, total_steps=spec.loop.total_steps,
                         global_batch=global_batch)
            window_start, window_steps = time.perf_counter(), 0
        final = progress.step == spec.loop.total_steps
        if final or progress.step % spec.loop.checkpoint_every == 0:
            save_and_report(engine, progress, stats, rank=rank, final=final,
                            metrics_run_id=getattr(metric_logger, "run_id", None))


def initialize_deepspeed(model: torch.nn.Module, setup: DeepSpeedSetup) -> DeepSpeedEngine:
    """`deepspeed.initialize` on the process group Ray Train already set up (gloo on CPU, nccl on GPU)."""
    import deepspeed
    import torch

    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else (
        "nccl" if setup.on_gpu else "gloo")
    deepspeed.init_distributed(dist_backend=backend)
    trainable = [param for param in model.parameters() if param.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (every requires_grad is False); "
                         "check the stage's trainable set")
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=trainable, config=build_deepspeed_config(setup),
        lr_scheduler=build_lr_scheduler_factory(setup.config.schedule, loop_total_steps=setup.loop_total_steps),
    )
    return engine


def load_checkpoint(engine: DeepSpeedEngine, checkpoint: ray.train.Checkpoint | None, *,
                    world_size: int) -> TrainProgress:
    """Restore engine state from a Ray Train checkpoint (or start fresh when there is none)."""
    if checkpoint is None:
        return TrainProgress()
    with checkpoint.as_directory() as folder:
        try:
            saved = json.loads((Path(folder) / PROGRESS_FILE).read_text())
        except (OSError, ValueError) as err:
            raise damaged_checkpoint(folder, PROGRESS_FILE, err) from err
        if saved["world_size"] != world_size:
            raise ValueError(
                f"the checkpoint in {folder} was written by {saved['world_size']} workers but this run has "
                f"{world_size}; ZeRO optimizer shards cannot be re-split, so rerun with "
                f"num_workers={saved['world_size']} or start a new run name"
            )
        try:
            path, _ = engine.load_checkpoint(folder, tag=saved["tag"], load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
        except Exception as err:  # noqa: BLE001 - a damaged file surfaces as any of torch's load errors
            raise damaged_checkpoint(folder, saved["tag"], err) from err
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint with tag {saved['tag']} in {folder}")
    log.info("resumed from step %d (%d samples seen)", saved["step"], saved["samples_seen"])
    return TrainProgress(step=saved["step"], samples_seen=saved["samples_seen"], resumed_from_step=saved["step"],
                         metrics_run_id=saved.get("metrics_run_id"))


def carry_curve_over(metric_logger: MetricLogger, progress: TrainProgress) -> None:
    """A run resumed by a new pipeline invocation logs into a new MLflow run: copy the steps the checkpoint
    already holds from the run that logged them, so the run that publishes the output has the whole curve.

    Only a logger that knows its run (`run_id`) and can copy another's (`copy_history`, as the MLflow one does)
    carries a curve over; others (a test's file logger) just log from the resumed step on."""
    source = progress.metrics_run_id
    if not source or source == getattr(metric_logger, "run_id", None) or not hasattr(metric_logger, "copy_history"):
        return
    copied = metric_logger.copy_history(source, up_to_step=progress.step)
    log.info("resumed at step %d: copied %d metric points of steps 1..%d from MLflow run %s", progress.step,
             copied, progress.step, source)


def damaged_checkpoint(folder: str, part: str, err: BaseException) -> RuntimeError:
    """The error for a checkpoint that cannot be read back: where it is and the two ways out."""
    return RuntimeError(
        f"the training checkpoint in {folder} cannot be loaded ({part}: {type(err).__name__}: {err}); it is "
        f"damaged. Delete that checkpoint folder to resume from the one before it, or rerun the step with "
        f"--force <step> to train from scratch"
    )


def train_step(engine: DeepSpeedEngine, task: TrainTask[BatchT], batches: Iterator[BatchT], *, seed: int, rank: int,
               first_micro_batch: int) -> StepStats:
    """One optimizer step = `gradient_accumulation_steps` micro-batches; loss averaged over all ranks."""
    import torch

    accumulation = engine.gradient_accumulation_steps()
    lr = float(engine.get_lr()[0])  # the lr this step uses (the scheduler advances inside engine.step)
    loss_sum = torch.zeros((), dtype=torch.float64)
    for micro in range(accumulation):
        micro_seed = micro_batch_seed(seed, rank, first_micro_batch + micro)
        torch.manual_seed(micro_seed)  # dropout and any other draw from the global RNG
        generator = torch.Generator().manual_seed(micro_seed)
        loss = task.loss(engine.module, next(batches), generator)
        engine.backward(loss)
        engine.step()
        loss_sum += loss.detach().double().cpu()
    torch.distributed.all_reduce(loss_sum)
    mean_loss = float(loss_sum) / (accumulation * torch.distributed.get_world_size())
    grad_norm = engine.get_global_grad_norm()
    grad_norm = float(grad_norm) if grad_norm is not None else None
    return StepStats(loss=mean_loss, lr=lr, grad_norm=grad_norm)


def micro_batch_seed(seed: int, rank: int, micro_batch: int) -> int:
    """A distinct, reproducible RNG seed per (run seed, rank, micro-batch index)."""
    return (seed * 1_000_003 + rank * 7_919 + micro_batch * 104_729 + 17) % (2**63 - 1)


def log_step(metric_logger: MetricLogger | None, step: int, stats: StepStats, samples_per_s: float, *, total_steps: int,
             global_batch: int) -> None:
    """Rank 0 only: Ray Train V2 keeps no metrics reported without a checkpoint, so MLflow gets them here.

    The console line reads `step i/N loss ... lr ... samples/s ... ETA ...`; the time left is the steps left at
    the rate of the last logging window (checkpoint saves between windows are not counted in)."""
    if metric_logger is not None:
        metric_logger.log_metric("loss", stats.loss, step)
        metric_logger.log_metric("lr", stats.lr, step)
        if stats.grad_norm is not None:
            metric_logger.log_metric("grad_norm", stats.grad_norm, step)
        metric_logger.log_metric("samples_per_s", samples_per_s, step)
    left_s = (total_steps - step) * global_batch / samples_per_s if samples_per_s > 0 else None
    log.info("step %d/%d loss %.5f lr %.3g grad_norm %s samples/s %.1f ETA %s", step, total_steps, stats.loss,
             stats.lr, "n/a" if stats.grad_norm is None else f"{stats.grad_norm:.4f}", samples_per_s,
             "n/a" if left_s is None else format_duration(left_s))


def save_and_report(engine: DeepSpeedEngine, progress: TrainProgress, stats: StepStats, *, rank: int, final: bool,
                    metrics_run_id: str | None = None) -> None:
    """All ranks: DeepSpeed checkpoint into a private folder, reported (merged) as one Ray Train checkpoint."""
    import ray.train

    tag = f"step_{progress.step:08d}"
    folder = Path(tempfile.mkdtemp(prefix=f"vlv-ckpt-r{rank}-"))
    try:
        engine.save_checkpoint(str(folder), tag=tag, client_state={"step": progress.step})
        stats_dir = folder / WORKER_STATS_DIR
        stats_dir.mkdir()
        (stats_dir / f"rank_{rank:04d}.json").write_text(json.dumps(rank_stats(engine, rank).__dict__))
        trainable_state = full_trainable_state(engine) if final else None  # a collective under ZeRO-3
        if rank == 0:
            (folder / PROGRESS_FILE).write_text(json.dumps({
                "step": progress.step, "samples_seen": progress.samples_seen, "tag": tag,
                "world_size": engine.world_size, "metrics_run_id": metrics_run_id,
            }))
            if trainable_state is not None:
                export_safetensors(trainable_state, folder / EXPORT_FILE)
        metrics = {"step": progress.step, "loss": stats.loss, "lr": stats.lr, "final": final,
                   "resumed_from_step": -1 if progress.resumed_from_step is None else progress.resumed_from_step}
        if stats.grad_norm is not None:
            metrics["grad_norm"] = stats.grad_norm
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                         checkpoint_dir_name=f"checkpoint_{tag}")
        # The controller registers a checkpoint only once it has collected every rank's report; a rank that
        # dies before that loses the checkpoint. Wait for the commit so a reported checkpoint is a kept one.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if rank == 0:
        log.debug("checkpoint %s reported (final=%s)", tag, final)


def full_trainable_state(engine: DeepSpeedEngine) -> dict[str, torch.Tensor] | None:
    """Full (unsharded) trainable tensors on rank 0, None elsewhere; every rank must call it.

    Under ZeRO-0/1/2 each rank's module holds the full parameters, so rank 0 reads its own state dict; under
    ZeRO-3 the parameters are partitioned and DeepSpeed gathers them (16-bit or fp32 as trained).
    """
    import torch

    trainable = {name for name, param in engine.module.named_parameters() if param.requires_grad}
    if engine.zero_optimization_stage() == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict() if torch.distributed.get_rank() == 0 else None
    if state is None:
        return None
    return {name: tensor.detach().cpu().clone().contiguous() for name, tensor in state.items() if name in trainable}


def export_safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """Clones above make tied tensors independent, which safetensors requires.

    One metadata entry only: safetensors writes its metadata map in hash order, which changes from one process to
    the next, so two entries made the same weights a different file now and then (outputs compared by sha256)."""
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"format": "pt"})


def rank_stats(engine: DeepSpeedEngine, rank: int) -> RankStats:
    def count(param: torch.nn.Parameter) -> int:
        return int(getattr(param, "ds_numel", param.numel()))  # ZeRO-3 leaves an empty placeholder in param

    parameters = list(engine.module.parameters())
    return RankStats(
        rank=rank, optimizer_state_bytes=optimizer_state_bytes(engine),
        trainable_params=sum(count(param) for param in parameters if param.requires_grad),
        frozen_params=sum(count(param) for param in parameters if not param.requires_grad),
    )


def optimizer_state_bytes(engine: DeepSpeedEngine) -> int:
    """Bytes of this rank's optimizer state tensors (Adam moments), i.e. what ZeRO-1/2 shard across ranks."""
    import torch

    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    total = 0
    for state in inner.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.dim() > 0:
                total += value.numel() * value.element_size()
    return total
