"""Training throughput: ZeRO-2 on N Ray Train workers vs a plain single-process PyTorch loop, same task.

    python benchmarks/bench_train_throughput.py [--task stage1|toy] [--workers 2] [--steps 12] [--global-batch N]

Both sides run the same `TrainTask` (model factory, batch stream, loss) with the same global batch, AdamW,
gradient clipping and schedule; the only difference is distribution. Throughput = samples/s over the steps
after `--warmup` (the Ray side measures on rank 0 between log points, the plain side with a wall clock).
`stage1` (default) is the tiny VLV stage-1 model (Florence queries -> frozen CLIP text -> frozen UNet/VAE) on
synthetic webdataset shards, built by the training tests' helpers; `toy` is the toy regression task. On a
CPU-only machine with two cores, two workers compete with everything else on it: read the ratio, not a verdict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_GLOBAL_BATCH = {"stage1": 8, "toy": 256}


def build_task(name: str, scratch: Path) -> Any:
    if name == "toy":
        from vlv.train.toy_task import ToyRegressionTask

        return ToyRegressionTask(in_dim=256, hidden=1024, out_dim=256, depth=4)
    from vlv.testing.tiny_training import tiny_stage1_task

    return tiny_stage1_task(scratch / "stage1")


@dataclass
class FileMetricLogger:
    path: str

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"name": name, "value": value, "step": step}) + "\n")


def plain_pytorch_samples_per_s(task: Any, deepspeed_config: Any, *, steps: int, warmup: int, seed: int,
                                threads: int) -> float:
    """Single process, no DeepSpeed: the baseline a distributed run has to beat."""
    import torch

    from vlv.train.deepspeed_config import build_lr_scheduler_factory

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = task.build_model()
    model.train()
    opt_cfg = deepspeed_config.optimizer
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opt_cfg.lr,
                                  betas=opt_cfg.betas, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay)
    scheduler = build_lr_scheduler_factory(deepspeed_config.schedule, loop_total_steps=steps)(optimizer)
    batches = task.batches(rank=0, world_size=1, batch_size=deepspeed_config.global_batch, start_batch=0)
    generator = torch.Generator().manual_seed(seed)
    started = None
    for step in range(steps):
        if step == warmup:
            started = time.perf_counter()
        loss = task.loss(model, next(batches), generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), deepspeed_config.gradient_clipping)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    assert started is not None
    return (steps - warmup) * deepspeed_config.global_batch / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(DEFAULT_GLOBAL_BATCH), default="stage1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=None, help="default: 8 for stage1, 256 for toy")
    args = parser.parse_args(argv)
    args.global_batch = args.global_batch or DEFAULT_GLOBAL_BATCH[args.task]
    if args.global_batch % args.workers:
        parser.error("--global-batch must be a multiple of --workers")

    from vlv.runtime_env import apply_runtime_defaults

    apply_runtime_defaults()
    import ray

    from vlv.train.deepspeed_config import AdamWConfig, DeepSpeedConfig, LRScheduleConfig
    from vlv.train.loop import LoopConfig
    from vlv.train.ray_trainer import RayTrainConfig, run_training

    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        task = build_task(args.task, Path(tmp))
        ds_config = DeepSpeedConfig(zero_stage=2, precision="fp32", global_batch=args.global_batch,
                                    micro_batch_per_worker=args.global_batch // args.workers, gradient_clipping=1.0,
                                    optimizer=AdamWConfig(lr=1e-3), schedule=LRScheduleConfig(total_steps=args.steps))

        def measure_plain() -> dict[int, float]:
            return {threads: plain_pytorch_samples_per_s(task, ds_config, steps=args.steps, warmup=args.warmup,
                                                         seed=0, threads=threads)
                    for threads in sorted({1, args.workers})}

        plain_before = measure_plain()
        started_ray = not ray.is_initialized()
        if started_ray:
            ray.init(address="local", num_cpus=args.workers, include_dashboard=False, configure_logging=False,
                     log_to_driver=False)
        try:
            logger = FileMetricLogger(str(Path(tmp) / "metrics.jsonl"))
            run_training(
                task=task, deepspeed=ds_config,
                loop=LoopConfig(total_steps=args.steps, checkpoint_every=args.steps, log_every=1),
                ray_train=RayTrainConfig(num_workers=args.workers, max_failures=0),
                storage_path=str(Path(tmp) / "ray"), name="throughput", metric_logger=logger,
            )
            lines = [json.loads(line) for line in Path(logger.path).read_text().splitlines()]
        finally:
            if started_ray:
                ray.shutdown()
        plain_after = measure_plain()  # before and after, so load drift on a shared machine shows up
        model = task.build_model()
    series = [line["value"] for line in lines if line["name"] == "samples_per_s" and line["step"] > args.warmup]
    zero2 = statistics.median(series)
    best_plain = max(max(plain_before.values()), max(plain_after.values()))

    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"\ntask: {type(task).__name__} ({params:,} parameters, {trainable:,} trainable), global batch "
          f"{args.global_batch}, "
          f"{args.steps} steps ({args.warmup} warm-up)")
    for threads in plain_before:
        print(f"plain PyTorch, 1 process x {threads} thread(s): {plain_before[threads]:10.1f} samples/s before, "
              f"{plain_after[threads]:10.1f} after")
    print(f"DeepSpeed ZeRO-2, {args.workers} Ray Train workers : {zero2:10.1f} samples/s (median per step; "
          f"min {min(series):.1f}, max {max(series):.1f})")
    print(f"\nthroughput ratio ZeRO-2 x {args.workers} workers / best plain single process: {zero2 / best_plain:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
