"""Optimizer-state bytes per rank, ZeRO-2 vs ZeRO-0, measured inside the Ray Train workers on the same model.

    python benchmarks/bench_zero_memory.py [--workers 2] [--hidden 512] [--depth 4] [--steps 2]

Each rank sums the bytes of its Adam state tensors after training (`vlv.train.loop.optimizer_state_bytes`)
and writes them next to the final checkpoint. Target: ZeRO-2's largest rank holds at most 0.55 of ZeRO-0's
(1/N plus padding for N=2 workers).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)

    from vlv.runtime_env import apply_runtime_defaults

    apply_runtime_defaults()
    import ray

    from vlv.train.deepspeed_config import AdamWConfig, DeepSpeedConfig, LRScheduleConfig
    from vlv.train.loop import LoopConfig
    from vlv.train.ray_trainer import RayTrainConfig, run_training
    from vlv.train.toy_task import ToyRegressionTask

    task = ToyRegressionTask(in_dim=args.hidden, hidden=args.hidden, out_dim=args.hidden, depth=args.depth)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address="local", num_cpus=args.workers, include_dashboard=False, configure_logging=False,
                 log_to_driver=False)
    per_rank: dict[int, list[int]] = {}
    trainable = 0
    try:
        with tempfile.TemporaryDirectory(prefix="bench-zero-") as tmp:
            for stage in (0, 2):
                outcome = run_training(
                    task=task,
                    deepspeed=DeepSpeedConfig(zero_stage=stage, micro_batch_per_worker=8,
                                              global_batch=8 * args.workers, optimizer=AdamWConfig(lr=1e-3),
                                              schedule=LRScheduleConfig(total_steps=args.steps)),
                    loop=LoopConfig(total_steps=args.steps, checkpoint_every=args.steps, log_every=args.steps),
                    ray_train=RayTrainConfig(num_workers=args.workers, max_failures=0),
                    storage_path=str(Path(tmp) / "ray"), name=f"zero{stage}",
                )
                per_rank[stage] = [s.optimizer_state_bytes for s in outcome.rank_stats]
                trainable = outcome.rank_stats[0].trainable_params
    finally:
        if started_ray:
            ray.shutdown()

    print(f"\nmodel: {trainable:,} trainable parameters; {args.workers} workers; Adam moments fp32 "
          f"(full state = 2 x 4 B x params = {8 * trainable:,} B)")
    print(f"{'ZeRO':>4} " + " ".join(f"{'rank ' + str(r) + ' bytes':>16}" for r in range(args.workers)))
    for stage, values in per_rank.items():
        print(f"{stage:>4} " + " ".join(f"{v:>16,}" for v in values))
    ratio = max(per_rank[2]) / max(per_rank[0])
    verdict = "PASS" if ratio <= 0.55 else "FAIL"
    print(f"\noptimizer-state bytes per rank, ZeRO-2 / ZeRO-0 (largest rank): {ratio:.4f}  "
          f"(target <= 0.55: {verdict})")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
