"""Per-GPU memory plan for the `paper` preset's two training stages on 8 GPUs of 48 GB and of 80 GB.

    python benchmarks/memory_plan.py [--gpus 8] [--gpu-memory 48 80] [--verbose]

Parameter counts are not typed in: the paper preset's models are built on the meta device from the shipped
architecture configs (vlv/models/configs), with each config's trainable set (stage 1: Florence-2-large's
transformer + queries + projection; stage 2: `trainable` of the captioner config, mlp+llm+encoder in the paper,
for Qwen2.5-3B and the 0.5B / 1.5B variants). Model states of the trainable parameters come from DeepSpeed's
own cold estimators (`estimate_zero2_model_states_mem_needs_all_cold`, `estimate_zero3_..._all_cold`: 16-bit
weights + fp32 gradients, master weights and Adam moments, no offload); the frozen weights are added at bf16 on
every GPU. Activations, CUDA context and fragmentation are NOT included: "free" is what is left for them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
from dataclasses import dataclass
from typing import Any

GB = 1024**3
STAGE2_LLMS = ("qwen2.5_3b", "qwen2.5_1.5b", "qwen2.5_0.5b")


@dataclass(frozen=True)
class ParameterCounts:
    name: str
    trainable: int
    frozen: int
    largest_layer: int  # parameters held directly by the largest trainable module (ZeRO-3 gathers one at a time)


@dataclass(frozen=True)
class PlanRow:
    counts: ParameterCounts
    zero_stage: int
    model_states: float  # bytes per GPU, DeepSpeed's estimate for the trainable parameters
    frozen_bf16: float  # bytes per GPU

    @property
    def total(self) -> float:
        return self.model_states + self.frozen_bf16


def count_parameters(name: str, model: Any) -> ParameterCounts:
    trainable = [p for p in model.parameters() if p.requires_grad]  # parameters() skips tied duplicates
    frozen = [p for p in model.parameters() if not p.requires_grad]
    largest = max(sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
                  for module in model.modules())
    return ParameterCounts(name, sum(p.numel() for p in trainable), sum(p.numel() for p in frozen), largest)


def paper_stage1_counts() -> ParameterCounts:
    import torch

    from vlv.models.vlv_stage1 import build_stage1_model
    from vlv.presets import paper

    cfg = dataclasses.replace(paper().train_stage1.model, init="random")  # shapes only: no weights on meta
    with torch.device("meta"):
        model = build_stage1_model(cfg)
    return count_parameters(f"stage 1: {cfg.florence_arch} + {cfg.sd_arch} (frozen)", model)


def paper_stage2_counts(llm_arch: str) -> ParameterCounts:
    """The captioner as `build_captioner` assembles it, with the LLM built from its shipped config (no tokenizer)."""
    import torch
    from transformers import Qwen2ForCausalLM

    from vlv.models.arch_configs import llm_config
    from vlv.models.captioner import PrefixMLP, VLVCaptioner
    from vlv.models.vlv_stage1 import build_caption_embedder
    from vlv.presets import paper

    preset = paper()
    cfg = dataclasses.replace(preset.train_stage2.model, llm_arch=llm_arch)
    with torch.device("meta"):
        embedder = build_caption_embedder(dataclasses.replace(preset.train_stage1.model, init="random"))
        llm = Qwen2ForCausalLM(llm_config(llm_arch))
        mlp = PrefixMLP(embedder.hidden_size, llm.config.hidden_size)
        model = VLVCaptioner(embedder, llm, None, trainable=cfg.trainable, max_caption_tokens=cfg.max_caption_tokens,
                             mlp=mlp)
    return count_parameters(f"stage 2: {llm_arch} ({cfg.trainable})", model)


def plan_rows(counts: ParameterCounts, num_gpus: int) -> list[PlanRow]:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    # The numbers the *_all_cold functions print in their "offload none" lines (one node of num_gpus).
    _, zero2 = estimate_zero2_model_states_mem_needs(counts.trainable, num_gpus_per_node=num_gpus, num_nodes=1,
                                                     cpu_offload=False)
    _, zero3, _ = estimate_zero3_model_states_mem_needs(counts.trainable, counts.largest_layer,
                                                        num_gpus_per_node=num_gpus, num_nodes=1, cpu_offload=False,
                                                        cpu_offload_params=False, zero_init=True)
    frozen = 2.0 * counts.frozen  # bf16, replicated (ZeRO-3 could partition them too: this is the upper bound)
    return [PlanRow(counts, 2, float(zero2), frozen), PlanRow(counts, 3, float(zero3), frozen)]


def print_deepspeed_estimates(counts: ParameterCounts, num_gpus: int) -> None:
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    print(f"\n--- {counts.name}: DeepSpeed cold estimates for {counts.trainable:,} trainable parameters ---")
    estimate_zero2_model_states_mem_needs_all_cold(counts.trainable, num_gpus_per_node=num_gpus, num_nodes=1)
    estimate_zero3_model_states_mem_needs_all_cold(counts.trainable, counts.largest_layer,
                                                   num_gpus_per_node=num_gpus, num_nodes=1)


def markdown_table(rows: list[PlanRow], num_gpus: int, gpu_memory_gb: list[int]) -> str:
    fits = " | ".join(f"{size} GB GPU" for size in gpu_memory_gb)
    lines = [f"| model ({num_gpus} GPUs) | trainable | frozen | ZeRO | model states / GPU (DeepSpeed est.) | "
             f"frozen bf16 / GPU | total / GPU | {fits} |",
             "|---|---:|---:|---:|---:|---:|---:|" + "---|" * len(gpu_memory_gb)]
    for row in rows:
        verdicts = " | ".join(_verdict(row.total, size) for size in gpu_memory_gb)
        lines.append(f"| {row.counts.name} | {row.counts.trainable / 1e9:.2f}B | {row.counts.frozen / 1e9:.2f}B | "
                     f"{row.zero_stage} | {row.model_states / GB:.1f} GB | {row.frozen_bf16 / GB:.1f} GB | "
                     f"{row.total / GB:.1f} GB | {verdicts} |")
    return "\n".join(lines)


def _verdict(total_bytes: float, size_gb: int) -> str:
    free = size_gb - total_bytes / GB
    return f"fits, {free:.1f} GB free" if free > 0 else f"does not fit ({-free:.1f} GB over)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-memory", type=int, nargs="+", default=[48, 80], help="GB per GPU, one per column")
    parser.add_argument("--verbose", action="store_true", help="also print DeepSpeed's own estimate tables")
    args = parser.parse_args(argv)

    from vlv.runtime_env import apply_runtime_defaults

    apply_runtime_defaults()
    with contextlib.redirect_stdout(io.StringIO()):
        import deepspeed  # noqa: F401  (its import logs the accelerator choice)

    all_counts = [paper_stage1_counts()] + [paper_stage2_counts(arch) for arch in STAGE2_LLMS]
    if args.verbose:
        for counts in all_counts:
            print_deepspeed_estimates(counts, args.gpus)
    rows = [row for counts in all_counts for row in plan_rows(counts, args.gpus)]
    print(f"\nPer-GPU memory of the paper preset's training, {args.gpus} GPUs (activations not included):\n")
    print(markdown_table(rows, args.gpus, args.gpu_memory))
    stage1 = all_counts[0]
    fp32_stage1 = (4 + 16 / args.gpus) * stage1.trainable + 4 * stage1.frozen
    print("\nModel states: DeepSpeed's estimate_zero{2,3}_model_states_mem_needs (what *_all_cold prints; 16-bit "
          "weights + fp32 grads, master and Adam, no offload) for the trainable parameters. Frozen weights at bf16 "
          "on every GPU, replicated (an upper bound under ZeRO-3).")
    print(f"The shipped stage-1 config trains in fp32 (ZeRO-2): 4 + 16/N bytes per trainable parameter and 4 per "
          f"frozen one, {fp32_stage1 / GB:.1f} GB per GPU on {args.gpus} GPUs.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
