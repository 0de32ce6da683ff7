"""Typed training hyper-parameters and their translation into the dict `deepspeed.initialize` takes.

The optimizer is DeepSpeed's `AdamW` type with `torch_adam: true` (plain `torch.optim.AdamW`): DeepSpeed's own
fused/CPU Adam kernels need a C++/CUDA build, torch's AdamW runs everywhere and ZeRO-1/2 shard its state the
same way. The learning-rate schedule is always a torch `LambdaLR` over one of our multiplier functions, never a
DeepSpeed scheduler object; DeepSpeed steps it once per optimizer step and saves its state in every checkpoint.

The official stage-1 run used DeepSpeed's `WarmupCosineLR` with `total_num_steps` 20,000 while training 200,000
steps. `DeepSpeedWarmupCosine` reproduces that scheduler (DeepSpeed 0.16.6) value for value, quirks included:
optimizer steps 0 and 1 run at lr 0 (its warm-up lasts at least two steps and starts from the ratio 0), and past
`total_num_steps` the cosine is not clamped, so the rate climbs back to the peak and keeps cycling with a period
of 2 x (total_num_steps - warm-up) steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

if TYPE_CHECKING:  # torch is imported where used: the config layer loads without it
    import torch

ALLOWED_ZERO_STAGES = (0, 1, 2, 3)
ALLOWED_PRECISIONS = ("fp32", "bf16", "fp16")
ALLOWED_SCHEDULES = ("cosine", "linear", "constant", "deepspeed_warmup_cosine")
ALLOWED_WARMUP_TYPES = ("linear", "log")


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
class DeepSpeedWarmupCosineConfig:
    """DeepSpeed's `WarmupCosineLR` parameters under DeepSpeed's own names, so the `scheduler.params` of a
    DeepSpeed JSON carry over one to one. Defaults: the official VLV stage-1 config (configs/deepspeed_fp32.json)."""

    total_num_steps: int = 20_000
    warmup_num_steps: int = 0  # DeepSpeed raises anything below 2 to 2
    warmup_min_ratio: float = 0.0
    warmup_type: Literal["linear", "log"] = "linear"
    cos_min_ratio: float = 1e-4

    def __post_init__(self) -> None:
        where = "schedule.warmup_cosine"
        if self.warmup_type not in ALLOWED_WARMUP_TYPES:
            raise ValueError(f"{where}.warmup_type must be one of {ALLOWED_WARMUP_TYPES}, got {self.warmup_type!r}")
        if self.warmup_num_steps < 0:
            raise ValueError(f"{where}.warmup_num_steps must be >= 0, got {self.warmup_num_steps}")
        if self.total_num_steps <= max(2, self.warmup_num_steps):
            raise ValueError(f"{where}.total_num_steps ({self.total_num_steps}) must exceed the warm-up "
                             f"({max(2, self.warmup_num_steps)} steps: DeepSpeed warms up for at least 2)")
        for name in ("warmup_min_ratio", "cos_min_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{where}.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class LRScheduleConfig:
    # cosine / linear / constant: linear warm-up over warmup_steps, then decay to lr x min_lr_ratio at total_steps.
    # deepspeed_warmup_cosine: DeepSpeed's WarmupCosineLR, step for step, from `warmup_cosine` (warmup_steps,
    # total_steps and min_lr_ratio are then unused).
    kind: Literal["cosine", "linear", "constant", "deepspeed_warmup_cosine"] = "cosine"
    warmup_steps: int = 0
    # Optimizer steps the decay spans. None: the train loop's total_steps (the decay ends with the run). A number
    # is a fixed horizon that does not follow loop.total_steps (past it the rate stays at the floor).
    total_steps: int | None = None
    min_lr_ratio: float = 0.0
    warmup_cosine: DeepSpeedWarmupCosineConfig = field(default_factory=DeepSpeedWarmupCosineConfig)

    def __post_init__(self) -> None:
        if self.kind not in ALLOWED_SCHEDULES:
            raise ValueError(f"schedule.kind must be one of {ALLOWED_SCHEDULES}, got {self.kind!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.total_steps is not None and self.total_steps <= 0:
            raise ValueError(f"schedule.total_steps must be > 0, or null for the loop's total_steps; got "
                             f"{self.total_steps}")
        if self.total_steps is not None and self.warmup_steps > self.total_steps:
            raise ValueError(f"schedule.warmup_steps ({self.warmup_steps}) must be <= schedule.total_steps "
                             f"({self.total_steps})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class DeepSpeedConfig:
    """Everything DeepSpeed needs; the defaults are the official stage-1 optimizer and batch settings."""

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


@dataclass(frozen=True)
class DeepSpeedSetup:
    """The DeepSpeed settings of one training run: the configured hyper-parameters on a worker group of a given
    size and device, with the loop length that bounds the lr decay.

    Everything `deepspeed.initialize` needs travels as this one value, from the driver to each Ray Train worker.
    Building it checks what only the combination can: the global batch against micro-batch x workers, fp16
    against the device, the warm-up against the decay horizon; so a step's preflight, the driver and the workers
    see the same errors, and the DeepSpeed dict is made once, by `build_deepspeed_config`, where DeepSpeed starts.
    """

    config: DeepSpeedConfig
    num_workers: int
    on_gpu: bool
    loop_total_steps: int  # the lr decay horizon when schedule.total_steps is null

    def __post_init__(self) -> None:
        if self.config.precision == "fp16" and not self.on_gpu:
            raise ValueError("deepspeed.precision='fp16' is refused by DeepSpeed on CPU (no fp16 loss scaling "
                             "there); use precision='bf16' or 'fp32'")
        gradient_accumulation_steps(global_batch=self.config.global_batch,
                                    micro_batch_per_worker=self.config.micro_batch_per_worker,
                                    num_workers=self.num_workers)
        lr_multiplier(self.config.schedule, loop_total_steps=self.loop_total_steps)

    @property
    def gradient_accumulation_steps(self) -> int:
        return gradient_accumulation_steps(global_batch=self.config.global_batch,
                                           micro_batch_per_worker=self.config.micro_batch_per_worker,
                                           num_workers=self.num_workers)

    def lr_schedule(self) -> WarmupDecaySchedule | DeepSpeedWarmupCosine:
        """The lr multiplier of optimizer step s this run follows."""
        return lr_multiplier(self.config.schedule, loop_total_steps=self.loop_total_steps)

    def describe(self) -> str:
        """One line for the run log: the ZeRO stage, precision and how the global batch is made up."""
        config = self.config
        return (f"ZeRO-{config.zero_stage}, {config.precision}, global batch {config.global_batch} = "
                f"{config.micro_batch_per_worker} x {self.num_workers} workers x "
                f"{self.gradient_accumulation_steps} accumulation")


def build_deepspeed_config(setup: DeepSpeedSetup) -> dict[str, Any]:
    """The JSON-style dict for `deepspeed.initialize(config=...)`: the one place DeepSpeed's names appear."""
    config, opt = setup.config, setup.config.optimizer
    zero_optimization: dict[str, Any] = {"stage": config.zero_stage}
    if config.zero_stage in (1, 2):
        zero_optimization.update({
            "reduce_bucket_size": config.reduce_bucket_size,
            "allgather_bucket_size": config.allgather_bucket_size,
            "overlap_comm": False,  # no separate comm stream on CPU; keeps the reduction order fixed
            "contiguous_gradients": True,
        })
    return {
        "train_batch_size": config.global_batch,
        "train_micro_batch_size_per_gpu": config.micro_batch_per_worker,
        "gradient_accumulation_steps": setup.gradient_accumulation_steps,
        "gradient_clipping": config.gradient_clipping,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": opt.lr, "betas": list(opt.betas), "eps": opt.eps,
                       "weight_decay": opt.weight_decay, "torch_adam": True, "adam_w_mode": True},
        },
        "zero_optimization": zero_optimization,
        "bf16": {"enabled": config.precision == "bf16"},
        "fp16": {"enabled": config.precision == "fp16"},
        "steps_per_print": 10**9,  # we log ourselves, from rank 0 only
        "wall_clock_breakdown": False,
    }


@dataclass(frozen=True)
class WarmupDecaySchedule:
    """lr multiplier at optimizer step s (0-based): linear warm-up to 1, then cosine/linear decay to min ratio.

    A picklable callable, so `LambdaLR` can carry it into Ray workers and checkpoints.
    """

    kind: str
    warmup_steps: int
    total_steps: int
    min_lr_ratio: float

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


@dataclass(frozen=True)
class DeepSpeedWarmupCosine:
    """DeepSpeed 0.16.6 `WarmupCosineLR` as an lr multiplier of optimizer step s (0-based), bit for bit.

    DeepSpeed's scheduler reports lr 0 until its first `step()`, and the engine steps it after each optimizer
    step, so optimizer step s runs at DeepSpeed's ratio for iteration s - 1. The arithmetic follows DeepSpeed's
    own order of operations, so the product with the base lr is the same float.
    """

    total_num_steps: int
    warmup_num_steps: int
    warmup_min_ratio: float
    warmup_type: str
    cos_min_ratio: float

    @classmethod
    def from_config(cls, config: DeepSpeedWarmupCosineConfig) -> DeepSpeedWarmupCosine:
        return cls(config.total_num_steps, max(2, config.warmup_num_steps), config.warmup_min_ratio,
                   config.warmup_type, config.cos_min_ratio)

    @property
    def period(self) -> int:
        """Steps of one full cosine cycle: the rate is back at its peak this many steps after leaving it."""
        return 2 * (self.total_num_steps - self.warmup_num_steps)

    def __call__(self, step: int) -> float:
        iteration = step - 1
        if iteration < 0:
            return 0.0
        if iteration < self.warmup_num_steps:
            if self.warmup_type == "log":
                ratio = (1.0 / math.log(self.warmup_num_steps)) * math.log(iteration + 1)
            else:
                ratio = iteration / self.warmup_num_steps
            return self.warmup_min_ratio + ratio * (1.0 - self.warmup_min_ratio)
        done = iteration - self.warmup_num_steps + 1
        span = self.total_num_steps - self.warmup_num_steps
        ratio = (1 + math.cos(math.pi * done / span)) / 2
        return max(0.0, self.cos_min_ratio + (1.0 - self.cos_min_ratio) * ratio)


def lr_multiplier(config: LRScheduleConfig, *, loop_total_steps: int) -> WarmupDecaySchedule | DeepSpeedWarmupCosine:
    """The multiplier function of a schedule; `loop_total_steps` is the decay horizon when total_steps is null."""
    if config.kind == "deepspeed_warmup_cosine":
        return DeepSpeedWarmupCosine.from_config(config.warmup_cosine)
    total = loop_total_steps if config.total_steps is None else config.total_steps
    if config.warmup_steps > total:
        raise ValueError(f"schedule.warmup_steps ({config.warmup_steps}) must be <= the decay horizon ({total} "
                         f"steps: schedule.total_steps, or loop.total_steps when that is null)")
    return WarmupDecaySchedule(config.kind, config.warmup_steps, total, config.min_lr_ratio)


def describe_schedule(config: LRScheduleConfig, *, loop_total_steps: int) -> str:
    """One line for the run log: which schedule, over how many steps, and whether it outlasts the run."""
    schedule = lr_multiplier(config, loop_total_steps=loop_total_steps)
    if isinstance(schedule, DeepSpeedWarmupCosine):
        text = (f"DeepSpeed WarmupCosineLR (total_num_steps {schedule.total_num_steps}, cos_min_ratio "
                f"{schedule.cos_min_ratio:g}); steps 0-1 at lr 0")
        if loop_total_steps > schedule.total_num_steps:
            text += (f"; the {loop_total_steps}-step run outlasts it, so the rate cycles back up every "
                     f"{schedule.period} steps, as DeepSpeed does")
        return text
    text = f"{schedule.kind}, warm-up {schedule.warmup_steps}, decay over {schedule.total_steps} steps"
    if schedule.kind != "constant" and schedule.total_steps > loop_total_steps:
        ratio = schedule(loop_total_steps - 1)
        text += f" (the {loop_total_steps}-step run ends at {ratio:.3g} x the peak lr)"
    return text


def build_lr_scheduler_factory(config: LRScheduleConfig, *, loop_total_steps: int
                               ) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LambdaLR]:
    """What `deepspeed.initialize(lr_scheduler=...)` calls with the optimizer it built."""
    import torch

    schedule = lr_multiplier(config, loop_total_steps=loop_total_steps)

    def make(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)

    return make


# Horizon of the official stage-2 linear decay, in optimizer steps. The script (train/train_VLV_stage2.py) builds
# get_scheduler("linear", num_warmup_steps=0, num_training_steps=epochs x (2e8 // (processes x batch)))
# = 2 x (2e8 // (8 x 8)) = 6,250,000 scheduler steps; accelerate (1.6.0) then steps a prepared scheduler once per
# process at every optimizer step (8 on 8 GPUs), so the rate reaches 0 after 6,250,000 / 8 optimizer steps.
STAGE2_OFFICIAL_DECAY_STEPS = 781_250


def stage1_official() -> DeepSpeedConfig:
    """Official stage-1 DeepSpeed config: AdamW 5e-5 (0.9, 0.99) 1e-8 wd 0.01, WarmupCosineLR over 20K steps
    (cycling through a 200K-step run), clip 1, fp32, ZeRO-2, 64 x 8 GPUs."""
    return DeepSpeedConfig(
        zero_stage=2, precision="fp32", micro_batch_per_worker=64, global_batch=512, gradient_clipping=1.0,
        optimizer=AdamWConfig(lr=5e-5, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01),
        schedule=LRScheduleConfig(kind="deepspeed_warmup_cosine", warmup_cosine=DeepSpeedWarmupCosineConfig(
            total_num_steps=20_000, warmup_num_steps=0, warmup_min_ratio=0.0, warmup_type="linear",
            cos_min_ratio=1e-4)),
    )


def stage2_paper() -> DeepSpeedConfig:
    """Stage 2: lr 1e-5 linear decay, bf16, batch 64 (8 x 8 GPUs) from the paper; the optimizer as the official
    script builds it (torch AdamW defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01; no gradient
    clipping) and its decay horizon (STAGE2_OFFICIAL_DECAY_STEPS), so over 100K steps the rate only falls from
    1e-5 to about 8.7e-6."""
    return DeepSpeedConfig(
        zero_stage=2, precision="bf16", micro_batch_per_worker=8, global_batch=64, gradient_clipping=0.0,
        optimizer=AdamWConfig(lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
        schedule=LRScheduleConfig(kind="linear", warmup_steps=0, total_steps=STAGE2_OFFICIAL_DECAY_STEPS),
    )
