"""DeepSpeedConfig on a worker group (DeepSpeedSetup) -> DeepSpeed dict, validation messages and the learning-rate
schedule (no Ray, no DeepSpeed)."""

from __future__ import annotations

import math

import pytest

from vlv.train.deepspeed_config import (
    AdamWConfig,
    DeepSpeedConfig,
    DeepSpeedSetup,
    LRScheduleConfig,
    build_deepspeed_config,
    gradient_accumulation_steps,
    lr_multiplier,
    stage1_official,
    stage2_paper,
)


def setup(config: DeepSpeedConfig, *, num_workers: int, on_gpu: bool, loop_total_steps: int = 1000) -> DeepSpeedSetup:
    return DeepSpeedSetup(config, num_workers=num_workers, on_gpu=on_gpu, loop_total_steps=loop_total_steps)


def test_official_stage1_config_translates_exactly():
    ds = build_deepspeed_config(setup(stage1_official(), num_workers=8, on_gpu=True))
    assert ds["train_batch_size"] == 512
    assert ds["train_micro_batch_size_per_gpu"] == 64
    assert ds["gradient_accumulation_steps"] == 1
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}
    assert ds["gradient_clipping"] == 1.0
    assert ds["optimizer"] == {"type": "AdamW", "params": {
        "lr": 5e-5, "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.01, "torch_adam": True,
        "adam_w_mode": True}}
    assert stage1_official().schedule.kind == "deepspeed_warmup_cosine"


def test_stage2_paper_config_is_bf16_linear_decay_batch_64():
    cfg = stage2_paper()
    ds = build_deepspeed_config(setup(cfg, num_workers=8, on_gpu=True))
    assert ds["bf16"]["enabled"] is True and ds["train_batch_size"] == 64
    assert ds["optimizer"]["params"]["lr"] == 1e-5 and cfg.schedule.kind == "linear"
    assert ds["gradient_clipping"] == 0.0 and ds["optimizer"]["params"]["betas"] == [0.9, 0.999]


def test_accumulation_is_global_over_micro_times_workers():
    assert gradient_accumulation_steps(global_batch=512, micro_batch_per_worker=64, num_workers=2) == 4
    ds = build_deepspeed_config(setup(DeepSpeedConfig(micro_batch_per_worker=4, global_batch=32), num_workers=2,
                                      on_gpu=False))
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 4 * 2 * 4


def test_indivisible_global_batch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"global_batch \(100\) must be a multiple of .*\(64 x 8 = 512\)"):
        setup(DeepSpeedConfig(micro_batch_per_worker=64, global_batch=100), num_workers=8, on_gpu=True)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_allowed_zero_stages(stage):
    ds = build_deepspeed_config(setup(DeepSpeedConfig(zero_stage=stage, micro_batch_per_worker=1, global_batch=2),
                                      num_workers=2, on_gpu=False))
    assert ds["zero_optimization"]["stage"] == stage


@pytest.mark.parametrize("stage", [4, -1, "2"])
def test_bad_zero_stage_names_the_field_and_allowed_values(stage):
    with pytest.raises(ValueError, match=r"zero_stage must be one of \(0, 1, 2, 3\)"):
        DeepSpeedConfig(zero_stage=stage)


def test_fp16_on_cpu_is_refused_with_the_alternatives():
    with pytest.raises(ValueError, match="refused by DeepSpeed on CPU.*use precision='bf16' or 'fp32'"):
        setup(DeepSpeedConfig(precision="fp16", micro_batch_per_worker=1, global_batch=1), num_workers=1,
              on_gpu=False)
    ds = build_deepspeed_config(setup(DeepSpeedConfig(precision="fp16", micro_batch_per_worker=1, global_batch=1),
                                      num_workers=1, on_gpu=True))
    assert ds["fp16"]["enabled"] is True


def test_setup_refuses_a_warmup_longer_than_the_loop_it_decays_over():
    config = DeepSpeedConfig(micro_batch_per_worker=1, global_batch=2, schedule=LRScheduleConfig(warmup_steps=20))
    with pytest.raises(ValueError, match=r"warmup_steps \(20\) must be <= the decay horizon \(10 steps"):
        setup(config, num_workers=2, on_gpu=False, loop_total_steps=10)
    assert setup(config, num_workers=2, on_gpu=False, loop_total_steps=20).lr_schedule()(19) == 1.0


def test_setup_describes_how_the_global_batch_is_made_up():
    described = setup(DeepSpeedConfig(zero_stage=1, precision="bf16", micro_batch_per_worker=2, global_batch=12),
                      num_workers=3, on_gpu=False).describe()
    assert described == "ZeRO-1, bf16, global batch 12 = 2 x 3 workers x 2 accumulation"


@pytest.mark.parametrize("bad", [
    dict(precision="fp8"), dict(micro_batch_per_worker=0), dict(global_batch=-2), dict(gradient_clipping=-1.0),
])
def test_other_bad_values_are_value_errors(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):
        DeepSpeedConfig(**bad)


@pytest.mark.parametrize("bad, field", [
    (dict(lr=0.0), "lr"), (dict(betas=(0.9, 1.0)), "betas"), (dict(eps=0.0), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_adamw_validation(bad, field):
    with pytest.raises(ValueError, match=field):
        AdamWConfig(**bad)


def test_schedule_validation():
    with pytest.raises(ValueError, match="schedule.kind"):
        LRScheduleConfig(kind="step")
    with pytest.raises(ValueError, match="warmup_steps"):
        LRScheduleConfig(warmup_steps=20, total_steps=10)


def test_cosine_schedule_values():
    schedule = lr_multiplier(LRScheduleConfig(kind="cosine", warmup_steps=0, total_steps=10), loop_total_steps=99)
    assert schedule(0) == 1.0  # no warm-up asked: the first step runs at the full lr
    assert schedule(5) == pytest.approx(0.5)
    assert schedule(10) == pytest.approx(0.0, abs=1e-12) and schedule(50) == pytest.approx(0.0, abs=1e-12)
    assert schedule(3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_linear_schedule_with_warmup_and_floor():
    schedule = lr_multiplier(LRScheduleConfig(kind="linear", warmup_steps=4, total_steps=None, min_lr_ratio=0.1),
                             loop_total_steps=14)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(4) == pytest.approx(1.0)
    assert schedule(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule(14) == pytest.approx(0.1) and schedule(100) == pytest.approx(0.1)


def test_lambda_lr_applies_the_schedule():
    import torch

    from vlv.train.deepspeed_config import build_lr_scheduler_factory

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    make = build_lr_scheduler_factory(LRScheduleConfig(kind="linear", total_steps=4), loop_total_steps=99)
    scheduler = make(optimizer)
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([2.0, 1.5, 1.0, 0.5, 0.0])
