"""The training loop under Ray Train with DeepSpeed ZeRO on 2 CPU workers: toy task and the tiny VLV stages.

The same checks run over task (toy regression, tiny stage 1, tiny stage 2) x ZeRO stage (1, 2):
- learns + frozen + sharded: at a fixed seed the loss falls, frozen parameters and buffers in the DeepSpeed
  checkpoint equal the seeded initial model bit for bit, and each rank holds about half of the Adam state;
- a run whose worker crashed, rerun under the same name (as after a driver crash), resumes from its checkpoint
  and ends with the same parameters as an uninterrupted run;
- a killed worker is replaced, training finishes with those same parameters, and the MLflow loss curve has
  every step exactly once (the replacement recomputes steps that were logged but not checkpointed).
By default (about a minute per Ray Train fit) only the first check runs, for the toy task under ZeRO-2 and the
tiny stage 2 under ZeRO-1 (the end-to-end test trains both stages under ZeRO-2); everything else is `slow`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray.train
import torch

from vlv.testing.tiny_training import tiny_stage1_task, tiny_stage2_task
from vlv.testing.train_doubles import CrashOnceTask, JsonlMetricLogger
from vlv.tracking import MlflowMetricLogger, metric_history
from vlv.train.deepspeed_config import AdamWConfig, DeepSpeedConfig, LRScheduleConfig
from vlv.train.loop import EXPORT_FILE, LoopConfig
from vlv.train.ray_trainer import RayTrainConfig, TrainingOutcome, run_training
from vlv.train.toy_task import ToyRegressionTask

pytestmark = pytest.mark.usefixtures("ray_session")

LOOP = LoopConfig(total_steps=6, checkpoint_every=3, log_every=1, seed=0)
NUM_WORKERS = 2
CRASH_STEP = 5  # rank 1 dies in step 5: step 4 is logged but the last checkpoint is step 3


@dataclass(frozen=True)
class Case:
    """One training workload: its batch sizes, the lr that makes it learn in 6 steps, and how much it must."""

    lr: float
    micro_batch: int
    global_batch: int
    max_loss_ratio: float  # fixed-seed loss after training / before must be below this

    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.micro_batch * NUM_WORKERS)


CASES = {
    "toy": Case(lr=1e-2, micro_batch=8, global_batch=32, max_loss_ratio=0.75),
    # The frozen random UNet bounds what the conditioning can explain: the denoising loss falls by a few percent.
    "stage1": Case(lr=1e-2, micro_batch=2, global_batch=4, max_loss_ratio=0.99),
    "stage2": Case(lr=2e-3, micro_batch=2, global_batch=4, max_loss_ratio=0.9),
}
DEFAULT_SUITE = {("toy", 2), ("stage2", 1)}


def _matrix(default: set[tuple[str, int]]) -> list[Any]:
    return [pytest.param(name, stage, id=f"{name}-zero{stage}",
                         marks=() if (name, stage) in default else pytest.mark.slow)
            for name in CASES for stage in (1, 2)]


def _deepspeed(case: Case, stage: int) -> DeepSpeedConfig:
    return DeepSpeedConfig(
        zero_stage=stage, precision="fp32", micro_batch_per_worker=case.micro_batch, global_batch=case.global_batch,
        gradient_clipping=1.0, optimizer=AdamWConfig(lr=case.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01),
        schedule=LRScheduleConfig(kind="cosine", warmup_steps=1, total_steps=LOOP.total_steps),
    )


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """The three workloads, built on first use (the stage tasks write tiny shards, a stage-1 folder, a BPE)."""
    built: dict[str, Any] = {}
    makers = {"toy": lambda: ToyRegressionTask(),
              "stage1": lambda: tiny_stage1_task(tmp_path_factory.mktemp("stage1-task")),
              "stage2": lambda: tiny_stage2_task(tmp_path_factory.mktemp("stage2-task"))}

    def get(name: str) -> Any:
        if name not in built:
            built[name] = makers[name]()
        return built[name]

    return get


def _train(root: Path, name: str, case: Case, stage: int, task: Any, *, max_failures: int = 0,
           logger: Any = None) -> TrainingOutcome:
    return run_training(
        task=task, deepspeed=_deepspeed(case, stage), loop=LOOP,
        ray_train=RayTrainConfig(num_workers=NUM_WORKERS, cpus_per_worker=1, max_failures=max_failures,
                                 num_checkpoints_to_keep=2),
        storage_path=str(root / "ray_train"), name=name, metric_logger=logger, export_dir=root / f"export-{name}",
    )


def _crashing(task: Any, case: Case, marker: Path) -> CrashOnceTask:
    """Rank 1 dies at the last micro-batch of CRASH_STEP, on the first attempt only."""
    return CrashOnceTask(inner=task, crash_rank=1, crash_batch=CRASH_STEP * case.accumulation - 1,
                         marker=str(marker))


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory, tasks):
    """Uninterrupted runs, one per (task, ZeRO stage), made on first use and shared by the tests below."""
    runs: dict[tuple[str, int], tuple[TrainingOutcome, JsonlMetricLogger]] = {}

    def get(name: str, stage: int) -> tuple[TrainingOutcome, JsonlMetricLogger]:
        if (name, stage) not in runs:
            root = tmp_path_factory.mktemp(f"reference-{name}-zero{stage}")
            logger = JsonlMetricLogger(str(root / "metrics.jsonl"))
            outcome = _train(root, f"reference-{name}-zero{stage}", CASES[name], stage, tasks(name), logger=logger)
            runs[name, stage] = outcome, logger
        return runs[name, stage]

    return get


# -- model-side helpers (driver) -------------------------------------------------------------------------------


def _initial_model(task: Any) -> torch.nn.Module:
    torch.manual_seed(LOOP.seed)  # what every worker does before build_model
    return task.build_model()


def _trainable_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of trainable parameters (tied parameters appear under every name)."""
    return {name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}


def _exported(outcome: TrainingOutcome) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(outcome.exported_weights)


def _fixed_seed_loss(task: Any, model: torch.nn.Module, batch_size: int) -> float:
    """Mean loss over the first 3 training batches of rank 0, noise from fixed generators, no dropout."""
    model.eval()
    batches = task.batches(rank=0, world_size=1, batch_size=batch_size, start_batch=0)
    with torch.no_grad():
        losses = [float(task.loss(model, next(batches), torch.Generator().manual_seed(i))) for i in range(3)]
    return statistics.fmean(losses)


def _checkpoint_module_state(outcome: TrainingOutcome) -> dict[str, torch.Tensor]:
    path = Path(outcome.checkpoint_path) / f"step_{LOOP.total_steps:08d}" / "mp_rank_00_model_states.pt"
    return torch.load(path, weights_only=False, map_location="cpu")["module"]


@pytest.mark.parametrize("name, stage", _matrix(DEFAULT_SUITE))
def test_training_learns_keeps_frozen_weights_and_shards_optimizer_state(tasks, reference_runs, name, stage):
    case, task = CASES[name], tasks(name)
    outcome, logger = reference_runs(name, stage)
    assert outcome.steps == LOOP.total_steps and outcome.resumed_from_step is None

    initial = _initial_model(task)
    initial_state = initial.state_dict()
    trainable_keys = _trainable_keys(initial)
    exported = _exported(outcome)
    assert set(exported) <= trainable_keys and set(exported) >= {n for n, p in initial.named_parameters()
                                                                  if p.requires_grad}

    # the loss falls: at a fixed seed on the training images (driver side), and every step is in the series
    trained = _initial_model(task)
    missing, unexpected = trained.load_state_dict(exported, strict=False)
    assert not unexpected and set(missing) == set(initial_state) - set(exported)
    before, after = _fixed_seed_loss(task, initial, case.micro_batch), _fixed_seed_loss(task, trained, case.micro_batch)
    assert after < case.max_loss_ratio * before, (before, after)
    losses = logger.series("loss")
    assert sorted(losses) == list(range(1, LOOP.total_steps + 1))
    assert all(torch.isfinite(torch.tensor(list(losses.values()))))
    assert set(logger.series("lr")) == set(logger.series("grad_norm")) == set(logger.series("samples_per_s"))
    assert logger.series("lr")[1] == pytest.approx(case.lr)  # warm-up of 1 step: full lr, then cosine decay
    assert logger.series("lr")[4] < logger.series("lr")[2]

    # frozen parameters and buffers bit for bit in the DeepSpeed checkpoint; every trainable tensor moved
    module_state = _checkpoint_module_state(outcome)
    assert set(module_state) == set(initial_state)
    frozen_keys = set(initial_state) - trainable_keys
    assert frozen_keys, "every task has a frozen part"
    changed_frozen = sorted(key for key in frozen_keys if not torch.equal(module_state[key], initial_state[key]))
    assert not changed_frozen, changed_frozen[:5]
    unmoved = sorted(key for key in trainable_keys if torch.equal(module_state[key], initial_state[key]))
    assert not unmoved, unmoved[:5]
    for key, tensor in exported.items():  # the export is the live module's state
        assert torch.equal(module_state[key], tensor), key

    # ZeRO shards the Adam moments: each of the 2 ranks holds about half of 2 x 4 bytes x trainable params
    trainable = sum(p.numel() for p in initial.parameters() if p.requires_grad)
    full_state = 2 * 4 * trainable
    assert [s.rank for s in outcome.rank_stats] == list(range(NUM_WORKERS))
    for stats in outcome.rank_stats:
        assert stats.trainable_params == trainable
        assert 0.45 * full_state <= stats.optimizer_state_bytes <= 0.55 * full_state, stats
    assert full_state <= sum(s.optimizer_state_bytes for s in outcome.rank_stats) <= 1.01 * full_state


def _assert_same_weights(a: TrainingOutcome, b: TrainingOutcome) -> None:
    wa, wb = _exported(a), _exported(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs after resume"


@pytest.mark.parametrize("name, stage", _matrix(set()))
def test_rerun_after_a_crashed_run_resumes_and_equals_uninterrupted(tasks, reference_runs, tmp_path, name, stage):
    case = CASES[name]
    reference, _ = reference_runs(name, stage)
    task = _crashing(tasks(name), case, tmp_path / "crashed")
    with pytest.raises(ray.train.TrainingFailedError):  # no retries allowed: the run fails
        _train(tmp_path, "crashy", case, stage, task, max_failures=0)
    assert (tmp_path / "crashed").exists()  # it failed because of the injected crash
    # the rerun (same run name and storage, as after a driver crash) continues from the step-3 checkpoint
    resumed = _train(tmp_path, "crashy", case, stage, task, max_failures=0)
    assert resumed.resumed_from_step == LOOP.checkpoint_every and resumed.steps == LOOP.total_steps
    _assert_same_weights(reference, resumed)


@pytest.mark.parametrize("name, stage", _matrix(set()))
def test_killed_worker_is_replaced_and_mlflow_curve_has_each_step_once(tasks, reference_runs, tmp_path, name, stage):
    from mlflow.tracking import MlflowClient

    case = CASES[name]
    reference, reference_logger = reference_runs(name, stage)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(client.create_experiment("train")).info.run_id
    task = _crashing(tasks(name), case, tmp_path / "crashed")

    outcome = _train(tmp_path, "replaced", case, stage, task, max_failures=1,
                     logger=MlflowMetricLogger(tracking_uri, run_id))
    assert (tmp_path / "crashed").exists()  # the failure did happen, after step 4 was logged
    assert outcome.steps == LOOP.total_steps and outcome.resumed_from_step == LOOP.checkpoint_every
    assert (Path(outcome.checkpoint_path) / EXPORT_FILE).is_file()
    _assert_same_weights(reference, outcome)

    # steps 4.. were computed twice but each is in MLflow once, with the uninterrupted run's value
    expected_loss = sorted(reference_logger.series("loss").items())
    assert metric_history(tracking_uri, run_id, "loss") == expected_loss
    for metric in ("lr", "samples_per_s"):
        assert [step for step, _ in metric_history(tracking_uri, run_id, metric)] == \
            list(range(1, LOOP.total_steps + 1)), metric

    # rerunning a finished run trains nothing more and returns the same final checkpoint
    again = _train(tmp_path, "replaced", case, stage, task, max_failures=1)
    assert again.checkpoint_path == outcome.checkpoint_path and again.steps == LOOP.total_steps
    _assert_same_weights(reference, again)
