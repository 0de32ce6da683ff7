"""The learning-rate schedules against what the official runs used: DeepSpeed 0.16.6's WarmupCosineLR (stage 1,
recorded from DeepSpeed itself into fixtures/) and the official stage-2 linear horizon."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vlv.train.deepspeed_config import (
    STAGE2_OFFICIAL_DECAY_STEPS,
    DeepSpeedSetup,
    DeepSpeedWarmupCosine,
    DeepSpeedWarmupCosineConfig,
    LRScheduleConfig,
    build_deepspeed_config,
    build_lr_scheduler_factory,
    describe_schedule,
    lr_multiplier,
    stage1_official,
    stage2_paper,
)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "deepspeed_0166_warmup_cosine_lr.json").read_text())
OFFICIAL = FIXTURE["curves"]["official_stage1"]
PAPER_STAGE1_STEPS = 200_000


def _lambda_lr_curve(schedule: LRScheduleConfig, base_lr: float, steps: int, loop_total_steps: int) -> list[float]:
    """The lr each optimizer step runs at under a real LambdaLR, stepped once per optimizer step as the DeepSpeed
    engine steps it (the optimizer itself is not stepped: only its lr is read)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = build_lr_scheduler_factory(schedule, loop_total_steps=loop_total_steps)(optimizer)
    lrs = [optimizer.param_groups[0]["lr"]]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of")
        for _ in range(steps):
            scheduler.step()
            lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def _config(params: dict) -> LRScheduleConfig:
    return LRScheduleConfig(kind="deepspeed_warmup_cosine", warmup_cosine=DeepSpeedWarmupCosineConfig(**params))


def test_paper_stage1_schedule_is_the_official_deepspeed_config():
    schedule = stage1_official().schedule
    assert schedule.kind == "deepspeed_warmup_cosine"
    assert schedule.warmup_cosine == DeepSpeedWarmupCosineConfig(**OFFICIAL["params"])
    assert stage1_official().optimizer.lr == OFFICIAL["base_lr"]


def test_stage1_curve_equals_deepspeed_0166_point_by_point():
    """Every recorded value (every 500th step, and around each minimum and maximum), exactly, through LambdaLR."""
    recorded = {int(step): lr for step, lr in OFFICIAL["lr"].items()}
    assert max(recorded) == PAPER_STAGE1_STEPS and len(recorded) > 400
    early = _lambda_lr_curve(stage1_official().schedule, OFFICIAL["base_lr"], 4_010, PAPER_STAGE1_STEPS)
    multiplier = lr_multiplier(stage1_official().schedule, loop_total_steps=PAPER_STAGE1_STEPS)
    for step, lr in recorded.items():
        ours = early[step] if step < len(early) else OFFICIAL["base_lr"] * multiplier(step)  # what LambdaLR computes
        assert ours == lr, f"step {step}: ours {ours!r}, DeepSpeed 0.16.6 {lr!r}"


def test_stage1_curve_shape_where_deepspeed_changes_behaviour():
    """Steps 0-1 at lr 0, the minimum 5e-9 at step 20,000, then back up: a cosine cycling every 39,996 steps."""
    recorded = {int(step): lr for step, lr in OFFICIAL["lr"].items()}
    assert recorded[0] == recorded[1] == 0.0 and recorded[2] == 2.5e-5
    assert recorded[20_000] == pytest.approx(5e-9, rel=1e-12)
    assert recorded[39_998] == 5e-5
    assert OFFICIAL["minima"] == [20_000, 59_996, 99_992, 139_988, 179_984]
    assert OFFICIAL["maxima"] == [3, 39_998, 79_994, 119_990, 159_986, 199_982]
    assert DeepSpeedWarmupCosine.from_config(stage1_official().schedule.warmup_cosine).period == 39_996


def _closed_form(steps: np.ndarray, total: int, warmup: int, warmup_min: float, warmup_type: str,
                 cos_min: float) -> np.ndarray:
    """DeepSpeed's WarmupCosineLR written independently: iteration = step - 1, lr 0 before the first step."""
    warmup = max(2, warmup)
    iteration = steps - 1
    if warmup_type == "log":
        rise = np.log(np.maximum(iteration, 0) + 1.0) / math.log(warmup)
    else:
        rise = iteration / warmup
    in_warmup = warmup_min + (1 - warmup_min) * rise
    cosine = cos_min + (1 - cos_min) * (1 + np.cos(np.pi * (iteration - warmup + 1) / (total - warmup))) / 2
    return np.where(iteration < 0, 0.0, np.where(iteration < warmup, in_warmup, cosine))


def test_stage1_multiplier_equals_the_closed_form_at_every_step():
    steps = np.arange(PAPER_STAGE1_STEPS + 1)
    multiplier = lr_multiplier(stage1_official().schedule, loop_total_steps=PAPER_STAGE1_STEPS)
    ours = np.array([multiplier(int(s)) for s in steps])
    expected = _closed_form(steps, **{"total": 20_000, "warmup": 0, "warmup_min": 0.0, "warmup_type": "linear",
                                      "cos_min": 1e-4})
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)
    assert ours[:2].tolist() == [0.0, 0.0]
    assert ours[2:].min() == pytest.approx(1e-4) and ours[3:].max() == 1.0


@pytest.mark.parametrize("curve", ["log_warmup", "linear_warmup"])
def test_warmup_branches_equal_deepspeed_0166(curve):
    recorded = FIXTURE["curves"][curve]
    config = _config(recorded["params"])
    lrs = _lambda_lr_curve(config, recorded["base_lr"], len(recorded["lr"]) - 1, loop_total_steps=10)
    assert lrs == [recorded["lr"][str(step)] for step in range(len(lrs))]
    params = recorded["params"]
    expected = _closed_form(np.arange(len(lrs)), params["total_num_steps"], params["warmup_num_steps"],
                            params["warmup_min_ratio"], params["warmup_type"], params["cos_min_ratio"])
    np.testing.assert_allclose(np.array(lrs) / recorded["base_lr"], expected, rtol=1e-12, atol=1e-15)


def test_official_schedules_do_not_stretch_to_the_loop():
    """A fixed horizon ignores loop.total_steps; a null one follows it."""
    stage1 = stage1_official().schedule
    short, long = (lr_multiplier(stage1, loop_total_steps=n) for n in (1_000, PAPER_STAGE1_STEPS))
    assert [short(s) for s in range(0, 50_000, 97)] == [long(s) for s in range(0, 50_000, 97)]

    stage2 = stage2_paper().schedule
    assert stage2.total_steps == STAGE2_OFFICIAL_DECAY_STEPS == 781_250
    for loop_steps in (1_000, 100_000):
        fixed = lr_multiplier(stage2, loop_total_steps=loop_steps)
        assert fixed(100_000) == pytest.approx(1 - 100_000 / 781_250)
    over_run = lr_multiplier(LRScheduleConfig(kind="linear", total_steps=None), loop_total_steps=100_000)
    assert over_run(50_000) == pytest.approx(0.5) and over_run(100_000) == 0.0


def test_stage1_single_cosine_over_the_run_is_one_set_away():
    from vlv.config_tree import apply_overrides
    from vlv.steps.train_stage1 import TrainStage1Config

    cfg = apply_overrides(TrainStage1Config(), {"deepspeed.schedule.kind": "cosine"})
    multiplier = lr_multiplier(cfg.deepspeed.schedule, loop_total_steps=cfg.loop.total_steps)
    assert multiplier(0) == 1.0 and multiplier(100_000) == pytest.approx(0.5)
    assert multiplier(200_000) == pytest.approx(0.0, abs=1e-12)


def test_stage2_paper_optimizer_is_the_official_one():
    """torch.optim.AdamW(params, lr=1e-5) with its defaults, no gradient clipping, linear over 781,250 steps."""
    cfg = stage2_paper()
    defaults = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-5).defaults
    assert cfg.optimizer.betas == defaults["betas"] == (0.9, 0.999)
    assert cfg.optimizer.eps == defaults["eps"] and cfg.optimizer.weight_decay == defaults["weight_decay"] == 0.01
    assert cfg.gradient_clipping == 0.0
    ds = build_deepspeed_config(DeepSpeedSetup(cfg, num_workers=8, on_gpu=True, loop_total_steps=100_000))
    assert ds["gradient_clipping"] == 0.0 and ds["optimizer"]["params"]["betas"] == [0.9, 0.999]
    lrs = _lambda_lr_curve(cfg.schedule, 1e-5, 3, loop_total_steps=100_000)
    assert lrs == pytest.approx([1e-5, 1e-5 * (1 - 1 / 781_250), 1e-5 * (1 - 2 / 781_250), 1e-5 * (1 - 3 / 781_250)])
    # The official script's scheduler steps: 2 epochs x (2e8 // (8 processes x batch 8)), 8 per optimizer step.
    assert 2 * (int(2e8) // (8 * 8)) // 8 == STAGE2_OFFICIAL_DECAY_STEPS


def test_describe_schedule_says_when_the_rate_cycles_or_stays_high():
    text = describe_schedule(stage1_official().schedule, loop_total_steps=PAPER_STAGE1_STEPS)
    assert "total_num_steps 20000" in text and "every 39996 steps" in text
    text = describe_schedule(stage2_paper().schedule, loop_total_steps=100_000)
    assert "decay over 781250 steps" in text and "ends at 0.872" in text


@pytest.mark.parametrize("params, message", [
    (dict(total_num_steps=2), "total_num_steps"), (dict(warmup_type="exp"), "warmup_type"),
    (dict(cos_min_ratio=1.5), "cos_min_ratio"), (dict(warmup_num_steps=-1), "warmup_num_steps"),
])
def test_warmup_cosine_validation(params, message):
    with pytest.raises(ValueError, match=message):
        DeepSpeedWarmupCosineConfig(**params)


def test_warmup_longer_than_the_loop_is_refused_when_the_horizon_follows_it():
    with pytest.raises(ValueError, match=r"warmup_steps \(20\) must be <= the decay horizon \(10"):
        lr_multiplier(LRScheduleConfig(warmup_steps=20), loop_total_steps=10)
    with pytest.raises(ValueError, match="total_steps must be > 0, or null"):
        LRScheduleConfig(total_steps=0)


def test_training_steps_refuse_a_warmup_longer_than_the_run_before_running():
    from vlv.config import load_config
    from vlv.config_tree import parse_set_flags
    from vlv.steps.train_stage1 import TrainStage1Step

    cfg = load_config("tiny", overrides=parse_set_flags(["train_stage1.deepspeed.schedule.warmup_steps=20"]))
    assert cfg.train_stage1.loop.total_steps < 20
    with pytest.raises(ValueError, match=r"warmup_steps \(20\) must be <= the decay horizon"):
        TrainStage1Step().preflight(cfg.train_stage1)
