"""Typed training hyper-parameters and their translation into the dict `deepspeed.initialize` takes.

The optimizer is DeepSpeed's `AdamW` type with `torch_adam: true` (plain `torch.optim.AdamW`): DeepSpeed's own
fused/CPU Adam kernels need a C++/CUDA build, torch's AdamW runs everywhere and ZeRO-1/2 shard its state the
same way. The learning-rate schedule is a torch `LambdaLR` (see `WarmupDecaySchedule`) rather than DeepSpeed's
`WarmupCosineLR`, which forces at least two warm-up steps starting from lr 0 even when no warm-up is asked for;
DeepSpeed still steps it once per optimizer step and saves its state in every checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

ALLOWED_ZERO_STAGES = (0, 1, 2, 3)
ALLOWED_PRECISIONS = ("fp32", "bf16", "fp16")
ALLOWED_SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class AdamWConfig:
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.lr <= 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optimizer.betas must both be in [0, 1), got {self.betas}")
        if self.eps <= 0:
            raise ValueError(f"optimizer.eps must be > 0, got {self.eps}")
        if self.weight_decay < 0:
            raise ValueError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class LRScheduleConfig:
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    # Optimizer steps over which the decay runs; the train loop's `total_steps` usually.
    total_steps: int = 1000
    # The decay ends at lr x min_lr_ratio (0 = decay to zero).
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ALLOWED_SCHEDULES:
            raise ValueError(f"schedule.kind must be one of {ALLOWED_SCHEDULES}, got {self.kind!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.total_steps <= 0:
            raise ValueError(f"schedule.total_steps must be > 0, got {self.total_steps}")
        if self.warmup_steps > self.total_steps:
            raise ValueError(f"schedule.warmup_steps ({self.warmup_steps}) must be <= schedule.total_steps "
                             f"({self.total_steps})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class DeepSpeedConfig:
    """Everything DeepSpeed needs; defaults are the official stage-1 settings (SPEC section 2)."""

    zero_stage: int = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    micro_batch_per_worker: int = 64
    global_batch: int = 512
    gradient_clipping: float = 1.0  # 0 disables clipping
    optimizer: AdamWConfig = field(default_factory=AdamWConfig)
    schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    # ZeRO bucket sizes (elements); DeepSpeed's 5e8 default is sized for GPUs, smaller is fine on CPU.
    reduce_bucket_size: int = 50_000_000
    allgather_bucket_size: int = 50_000_000

    def __post_init__(self) -> None:
        if self.zero_stage not in ALLOWED_ZERO_STAGES:
            raise ValueError(f"deepspeed.zero_stage must be one of {ALLOWED_ZERO_STAGES} (1 or 2 for VLV "
                             f"training), got {self.zero_stage!r}")
        if self.precision not in ALLOWED_PRECISIONS:
            raise ValueError(f"deepspeed.precision must be one of {ALLOWED_PRECISIONS}, got {self.precision!r}")
        if self.micro_batch_per_worker <= 0:
            raise ValueError(f"deepspeed.micro_batch_per_worker must be > 0, got {self.micro_batch_per_worker}")
        if self.global_batch <= 0:
            raise ValueError(f"deepspeed.global_batch must be > 0, got {self.global_batch}")
        if self.gradient_clipping < 0:
            raise ValueError(f"deepspeed.gradient_clipping must be >= 0 (0 = off), got {self.gradient_clipping}")
        if self.reduce_bucket_size <= 0 or self.allgather_bucket_size <= 0:
            raise ValueError("deepspeed.reduce_bucket_size and deepspeed.allgather_bucket_size must be > 0")


def gradient_accumulation_steps(*, global_batch: int, micro_batch_per_worker: int, num_workers: int) -> int:
    """global = micro x workers x accumulation, exactly; anything else would silently change the recipe."""
    if num_workers <= 0:
        raise ValueError(f"num_workers must be > 0, got {num_workers}")
    per_step = micro_batch_per_worker * num_workers
    if global_batch % per_step != 0:
        raise ValueError(
            f"deepspeed.global_batch ({global_batch}) must be a multiple of micro_batch_per_worker x num_workers "
            f"({micro_batch_per_worker} x {num_workers} = {per_step}); change global_batch, "
            f"micro_batch_per_worker or num_workers"
        )
    return global_batch // per_step


def build_deepspeed_config(config: DeepSpeedConfig, *, num_workers: int, on_gpu: bool) -> dict[str, Any]:
    """The JSON-style dict for `deepspeed.initialize(config=...)`."""
    if config.precision == "fp16" and not on_gpu:
        raise ValueError("deepspeed.precision='fp16' is refused by DeepSpeed on CPU (no fp16 loss scaling "
                         "there); use precision='bf16' or 'fp32'")
    accumulation = gradient_accumulation_steps(
        global_batch=config.global_batch, micro_batch_per_worker=config.micro_batch_per_worker,
        num_workers=num_workers,
    )
    opt = config.optimizer
    ds: dict[str, Any] = {
        "train_batch_size": config.global_batch,
        "train_micro_batch_size_per_gpu": config.micro_batch_per_worker,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": config.gradient_clipping,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": opt.lr, "betas": list(opt.betas), "eps": opt.eps,
                       "weight_decay": opt.weight_decay, "torch_adam": True, "adam_w_mode": True},
        },
        "zero_optimization": {"stage": config.zero_stage},
        "bf16": {"enabled": config.precision == "bf16"},
        "fp16": {"enabled": config.precision == "fp16"},
        "steps_per_print": 10**9,  # we log ourselves, from rank 0 only
        "wall_clock_breakdown": False,
    }
    if config.zero_stage in (1, 2):
        ds["zero_optimization"].update({
            "reduce_bucket_size": config.reduce_bucket_size,
            "allgather_bucket_size": config.allgather_bucket_size,
            "overlap_comm": False,  # no separate comm stream on CPU; keeps the reduction order fixed
            "contiguous_gradients": True,
        })
    return ds


@dataclass(frozen=True)
class WarmupDecaySchedule:
    """lr multiplier at optimizer step s (0-based): linear warm-up to 1, then cosine/linear decay to min ratio.

    A picklable callable, so `LambdaLR` can carry it into Ray workers and checkpoints.
    """

    kind: str
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float

    @classmethod
    def from_config(cls, config: LRScheduleConfig) -> WarmupDecaySchedule:
        return cls(config.kind, config.warmup_steps, config.total_steps, config.min_lr_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.kind == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape


def build_lr_scheduler_factory(config: LRScheduleConfig):
    """What `deepspeed.initialize(lr_scheduler=...)` calls with the optimizer it built."""
    import torch

    schedule = WarmupDecaySchedule.from_config(config)

    def make(optimizer: Any) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)

    return make


def stage1_official() -> DeepSpeedConfig:
    """VLV official stage-1 settings: AdamW 5e-5 (0.9, 0.99) 1e-8 wd 0.01, cosine, clip 1, fp32, ZeRO-2, 64x8."""
    return DeepSpeedConfig(
        zero_stage=2, precision="fp32", micro_batch_per_worker=64, global_batch=512, gradient_clipping=1.0,
        optimizer=AdamWConfig(lr=5e-5, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01),
        schedule=LRScheduleConfig(kind="cosine", warmup_steps=0, total_steps=200_000),
    )


def stage2_paper() -> DeepSpeedConfig:
    """VLV stage-2 settings from the paper: lr 1e-5 linear decay, bf16, batch 64 (8 x 8 on 8 GPUs)."""
    return DeepSpeedConfig(
        zero_stage=2, precision="bf16", micro_batch_per_worker=8, global_batch=64, gradient_clipping=1.0,
        optimizer=AdamWConfig(lr=1e-5, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01),
        schedule=LRScheduleConfig(kind="linear", warmup_steps=0, total_steps=100_000),
    )
