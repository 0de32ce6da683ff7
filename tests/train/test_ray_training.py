"""The training loop under Ray Train with DeepSpeed ZeRO on 2 CPU workers, on the toy regression task.

One combined ZeRO-2 test runs by default (one Ray Train fit, about a minute): the loss falls, frozen parameters
are unchanged bit for bit, and each rank holds about half of the Adam state. The rest is `slow`: the same for
ZeRO-1, resume after a crashed run equals an uninterrupted run, and a killed worker is replaced.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray.train
import torch

from tests.train.ray_helpers import CrashOnceTask, JsonlMetricLogger
from vlv.train.deepspeed_config import AdamWConfig, DeepSpeedConfig, LRScheduleConfig
from vlv.train.loop import EXPORT_FILE, LoopConfig
from vlv.train.ray_trainer import RayTrainConfig, TrainingOutcome, run_training
from vlv.train.toy_task import ToyRegressionTask

pytestmark = pytest.mark.usefixtures("ray_session")

TASK = ToyRegressionTask()
LOOP = LoopConfig(total_steps=6, checkpoint_every=3, log_every=1, seed=0)
MICRO_BATCH, GLOBAL_BATCH = 8, 32  # 2 workers -> 2 micro-batches accumulated per step


def _deepspeed(stage: int) -> DeepSpeedConfig:
    return DeepSpeedConfig(
        zero_stage=stage, precision="fp32", micro_batch_per_worker=MICRO_BATCH, global_batch=GLOBAL_BATCH,
        gradient_clipping=1.0, optimizer=AdamWConfig(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01),
        schedule=LRScheduleConfig(kind="cosine", warmup_steps=1, total_steps=LOOP.total_steps),
    )


def _train(root: Path, name: str, stage: int, *, task=TASK, max_failures: int = 0, logger=None) -> TrainingOutcome:
    return run_training(
        task=task, deepspeed=_deepspeed(stage), loop=LOOP,
        ray_train=RayTrainConfig(num_workers=2, cpus_per_worker=1, max_failures=max_failures,
                                 num_checkpoints_to_keep=2),
        storage_path=str(root / "ray_train"), name=name, metric_logger=logger, export_dir=root / f"export-{name}",
    )


def _initial_model() -> torch.nn.Module:
    torch.manual_seed(LOOP.seed)  # what every worker does before build_model
    return TASK.build_model()


def _trained_model(outcome: TrainingOutcome) -> torch.nn.Module:
    from safetensors.torch import load_file

    model = _initial_model()
    missing, unexpected = model.load_state_dict(load_file(outcome.exported_weights), strict=False)
    assert not unexpected and sorted(missing) == ["frozen.bias", "frozen.weight"]
    return model


def _held_out_loss(model: torch.nn.Module) -> float:
    model.eval()
    with torch.no_grad():
        losses = [TASK.loss(model, TASK.batch_at(rank=99, index=i, batch_size=64)) for i in range(4)]
    return float(torch.stack(losses).mean())


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """Uninterrupted 6-step runs, one per ZeRO stage, made on first use and shared by the tests below."""
    runs: dict[int, tuple[TrainingOutcome, JsonlMetricLogger]] = {}

    def get(stage: int) -> tuple[TrainingOutcome, JsonlMetricLogger]:
        if stage not in runs:
            root = tmp_path_factory.mktemp(f"reference-zero{stage}")
            logger = JsonlMetricLogger(str(root / "metrics.jsonl"))
            runs[stage] = (_train(root, f"reference-zero{stage}", stage, logger=logger), logger)
        return runs[stage]

    return get


@pytest.mark.parametrize("stage", [2, pytest.param(1, marks=pytest.mark.slow)])
def test_training_learns_keeps_frozen_weights_and_shards_optimizer_state(reference_runs, stage):
    outcome, logger = reference_runs(stage)
    assert outcome.steps == LOOP.total_steps and outcome.resumed_from_step is None

    # the loss falls: on held-out data (driver side) and in the rank-0 metric series
    initial, trained = _initial_model(), _trained_model(outcome)
    assert _held_out_loss(trained) < 0.75 * _held_out_loss(initial)
    losses = logger.series("loss")
    assert sorted(losses) == list(range(1, LOOP.total_steps + 1))
    assert losses[LOOP.total_steps] < losses[1]
    assert set(logger.series("lr")) == set(logger.series("grad_norm")) == set(logger.series("samples_per_s"))
    assert logger.series("lr")[1] == pytest.approx(1e-2)  # warm-up of 1 step: full lr, then cosine decay
    assert logger.series("lr")[4] < logger.series("lr")[2]

    # frozen parameters bit for bit, read from the DeepSpeed checkpoint's module state; trainable ones moved
    checkpoint = Path(outcome.checkpoint_path)
    module_state = torch.load(checkpoint / "step_00000006" / "mp_rank_00_model_states.pt", weights_only=False,
                              map_location="cpu")["module"]
    for name, tensor in initial.state_dict().items():
        if name.startswith("frozen."):
            assert torch.equal(module_state[name], tensor), name
        else:
            assert not torch.equal(module_state[name], tensor), name
            assert torch.equal(module_state[name], trained.state_dict()[name]), name  # export == live module

    # ZeRO shards the Adam moments: each of the 2 ranks holds about half of 2 x 4 bytes x trainable params
    trainable = sum(p.numel() for p in initial.parameters() if p.requires_grad)
    full_state = 2 * 4 * trainable
    assert [s.rank for s in outcome.rank_stats] == [0, 1]
    for stats in outcome.rank_stats:
        assert stats.trainable_params == trainable
        assert 0.45 * full_state <= stats.optimizer_state_bytes <= 0.55 * full_state, stats
    assert full_state <= sum(s.optimizer_state_bytes for s in outcome.rank_stats) <= 1.01 * full_state


def _exported(outcome: TrainingOutcome) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(outcome.exported_weights)


def _assert_same_weights(a: TrainingOutcome, b: TrainingOutcome) -> None:
    wa, wb = _exported(a), _exported(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs after resume"


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_rerun_after_a_crashed_run_resumes_and_equals_uninterrupted(reference_runs, tmp_path, stage):
    reference, _ = reference_runs(stage)
    # rank 1 dies in step 5 (micro-batch 9 of 2 per step); checkpoints exist at step 3; no retries allowed
    task = CrashOnceTask(crash_rank=1, crash_batch=9, marker=str(tmp_path / "crashed"))
    with pytest.raises(ray.train.TrainingFailedError):
        _train(tmp_path, "crashy", stage, task=task, max_failures=0)
    assert (tmp_path / "crashed").exists()  # it failed because of the injected crash
    # the rerun (same run name and storage, as after a driver crash) continues from step 3
    resumed = _train(tmp_path, "crashy", stage, task=task, max_failures=0)
    assert resumed.resumed_from_step == 3 and resumed.steps == LOOP.total_steps
    _assert_same_weights(reference, resumed)


@pytest.mark.slow
def test_killed_worker_is_replaced_and_training_finishes(reference_runs, tmp_path):
    reference, _ = reference_runs(2)
    task = CrashOnceTask(crash_rank=1, crash_batch=9, marker=str(tmp_path / "crashed"))
    outcome = _train(tmp_path, "replaced", 2, task=task, max_failures=1)
    assert (tmp_path / "crashed").exists()  # the failure did happen
    assert outcome.steps == LOOP.total_steps and outcome.resumed_from_step == 3
    assert (Path(outcome.checkpoint_path) / EXPORT_FILE).is_file()
    _assert_same_weights(reference, outcome)
    # rerunning a finished run trains nothing more and returns the same final checkpoint
    again = _train(tmp_path, "replaced", 2, task=task, max_failures=1)
    assert again.checkpoint_path == outcome.checkpoint_path and again.steps == LOOP.total_steps
    _assert_same_weights(reference, again)
