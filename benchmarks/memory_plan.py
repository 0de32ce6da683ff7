"""Per-GPU memory of model states (weights, gradients, Adam) for the two VLV stages on 8 GPUs of 48 / 80 GB.

    python benchmarks/memory_plan.py [--stage1-trainable 0.77e9] [--stage1-frozen 1.30e9]
                                     [--stage2-trainable 3.09e9] [--stage2-frozen 0.35e9] [--gpus 8]

Two estimates side by side:
1. DeepSpeed's own estimators (`estimate_zero2_model_states_mem_needs_all_cold`, ZeRO-3 likewise). They assume
   every parameter is trainable and mixed precision (16-bit weights + fp32 master + fp32 Adam moments).
2. Our accounting for what the recipe actually runs: stage 1 in fp32 (4-byte weights, grads, master partition,
   8-byte Adam) with the frozen SD 2.1 UNet/VAE/CLIP text encoder held in fp32; stage 2 in bf16 (DeepSpeed's
   2 + 18/N bytes per trainable parameter) with frozen parts in bf16.
Activations, CUDA context and fragmentation are NOT included: "headroom" is what is left for them.

Default parameter counts are inputs, not measurements: stage-1 trainable ~0.77B (the Florence-2-large part,
per the training issue), frozen ~1.30B (SD 2.1 UNet ~866M + VAE ~84M + OpenCLIP ViT-H text tower ~354M);
stage-2 trainable ~3.09B (Qwen2.5-3B), frozen ~0.35B (the CLIP text tower). Pass counts measured on the meta
device (vlv.models) to replace them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import dataclass

GB = 1024**3


@dataclass(frozen=True)
class Scenario:
    name: str
    trainable: float
    frozen: float
    precision: str  # "fp32" or "bf16"
    largest_layer: float  # parameters of the largest layer (ZeRO-3 gathers one at a time)


def model_state_bytes_per_gpu(s: Scenario, *, zero_stage: int, num_gpus: int) -> float:
    """Weights + grads + fp32 master + Adam moments on one GPU, for our precision choices."""
    n, p = num_gpus, s.trainable
    if s.precision == "fp32":
        # ZeRO keeps an fp32 "master" partition next to the fp32 weights even in fp32 training
        weights, grads, master, adam, frozen = 4 * p, 4 * p, 4 * p, 8 * p, 4 * s.frozen
        grads_kept_full = 0.0
    else:  # bf16 weights and grads + fp32 grads partition + fp32 master + Adam (DeepSpeed's 2 + 18/N at ZeRO-2)
        weights, grads, master, adam, frozen = 2 * p, 4 * p, 4 * p, 8 * p, 2 * s.frozen
        grads_kept_full = 2 * p  # the bf16 gradients
    if zero_stage == 0:
        return weights + grads_kept_full + grads + master + adam + frozen
    if zero_stage == 1:  # optimizer state sharded, gradients not
        return weights + grads_kept_full + grads + (master + adam) / n + frozen
    if zero_stage == 2:  # gradients sharded too
        return weights + (grads_kept_full + grads + master + adam) / n + frozen
    return (weights + grads_kept_full + grads + master + adam) / n + frozen  # ZeRO-3; frozen parts replicated


def deepspeed_estimates(total_params: float, largest_layer: float, num_gpus: int) -> dict[str, float]:
    """DeepSpeed's cold estimators (one node of `num_gpus`), per-GPU bytes, for ZeRO-2 and ZeRO-3."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    total = int(total_params)
    z2 = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=num_gpus, num_nodes=1, cpu_offload=False)
    z2_off = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=num_gpus, num_nodes=1, cpu_offload=True)
    z3 = estimate_zero3_model_states_mem_needs(total, int(largest_layer), num_gpus_per_node=num_gpus, num_nodes=1,
                                               cpu_offload=False, cpu_offload_params=False, zero_init=True)
    return {"zero2": z2[1], "zero2_cpu_offload": z2_off[1], "zero2_offload_cpu_ram": z2_off[0], "zero3": z3[1]}


def print_deepspeed_tables(scenarios: list[Scenario], num_gpus: int) -> None:
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    for s in scenarios:
        print(f"\n--- DeepSpeed estimate_zero2_model_states_mem_needs_all_cold: {s.name} trainable params ---")
        estimate_zero2_model_states_mem_needs_all_cold(int(s.trainable), num_gpus_per_node=num_gpus, num_nodes=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage1-trainable", type=float, default=0.77e9)
    parser.add_argument("--stage1-frozen", type=float, default=1.30e9)
    parser.add_argument("--stage2-trainable", type=float, default=3.09e9)
    parser.add_argument("--stage2-frozen", type=float, default=0.35e9)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args(argv)

    from vlv.runtime_env import apply_runtime_defaults

    apply_runtime_defaults()
    scenarios = [
        # largest layers: Florence-2's 51,289 x 1,024 token embedding; Qwen2.5-3B's 151,936 x 2,048 embedding
        Scenario("stage 1 (fp32, Florence part trainable)", args.stage1_trainable, args.stage1_frozen, "fp32",
                 51_289 * 1024),
        Scenario("stage 2 (bf16, Qwen2.5-3B trainable)", args.stage2_trainable, args.stage2_frozen, "bf16",
                 151_936 * 2048),
    ]
    with contextlib.redirect_stdout(io.StringIO()) as deepspeed_banner:
        import deepspeed  # noqa: F401  (its import logs the accelerator choice)
    del deepspeed_banner
    print_deepspeed_tables(scenarios, args.gpus)

    print(f"\n=== model states per GPU on {args.gpus} GPUs (GB; activations not included) ===")
    header = (f"{'scenario':44} {'ZeRO':>4} {'ours':>8} {'DS est.':>8} {'free@48':>8} {'free@80':>8} "
              f"{'ratio vs ZeRO-0':>15}")
    print(header)
    print("-" * len(header))
    for s in scenarios:
        estimates = deepspeed_estimates(s.trainable, s.largest_layer, args.gpus)
        baseline = model_state_bytes_per_gpu(s, zero_stage=0, num_gpus=args.gpus)
        for stage in (0, 1, 2, 3):
            ours = model_state_bytes_per_gpu(s, zero_stage=stage, num_gpus=args.gpus)
            ds = {2: estimates["zero2"], 3: estimates["zero3"]}.get(stage)
            ds_text = f"{ds / GB:8.1f}" if ds is not None else f"{'-':>8}"
            print(f"{s.name:44} {stage:>4} {ours / GB:8.1f} {ds_text} {48 - ours / GB:8.1f} {80 - ours / GB:8.1f} "
                  f"{ours / baseline:15.2f}")
        print(f"{'':44} ZeRO-2 + optimizer offload (DS est.): {estimates['zero2_cpu_offload'] / GB:.1f} GB/GPU, "
              f"{estimates['zero2_offload_cpu_ram'] / GB:.0f} GB CPU RAM per node")
    print("\n'ours' counts frozen weights too (fp32 in stage 1, bf16 in stage 2); 'DS est.' counts trainable "
          "parameters only, in mixed precision.")


if __name__ == "__main__":
    main()
