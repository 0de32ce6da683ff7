"""`vlv plan`: what each pipeline step asks for, and the GPU-hours, wall time and cost to expect.

Every figure rests on a named basis, printed with the plan:
- the paper's own numbers (stage 1: 200K steps at global batch 512, about 770 GPU-hours on 8 x RTX 6000 Ada;
  stage 2: 100K steps at batch 64; about 40M images after the pre-filter; about 6M Gemini captions);
- measurements published by the tools' authors (img2dataset: 1350 URLs/s on one 16-core machine);
- assumptions, labelled as such (relative GPU speeds, prices, the per-sample cost of stage 2, model throughputs).
A row's resources, and so its GPUs and CPUs, are what the step declares for the config (`Step.work`: its task
and worker pools), the declarations the step runs on and the cluster preflight checks; this module holds only
the work side (`Workload`, `_job`). Training rows also read steps, global batch, precision and ZeRO stage from the
config's `train_stage*` sections. GPU-hours are taken as independent of the GPU count (the global batch is kept
with gradient accumulation), so more GPUs shorten the wall time, not the bill.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlv.engine.step import StepWork
from vlv.pipeline import pipeline_steps
from vlv.pipeline_config import PipelineConfig


@dataclass(frozen=True)
class GpuType:
    name: str
    relative_speed: float  # throughput on this workload relative to an RTX 6000 Ada (assumption)
    memory_gb: int
    usd_per_gpu_hour: float  # on-demand cloud price per GPU (assumption; pass --price-per-gpu-hour)
    price_basis: str


GPU_TYPES: tuple[GpuType, ...] = (
    GpuType("RTX6000-Ada", 1.0, 48, 1.00, "typical GPU-cloud rental, assumption"),
    GpuType("L40S", 1.0, 48, 3.77, "AWS g6e.48xlarge on demand / 8 GPUs, assumption"),
    GpuType("A100-80GB", 1.6, 80, 5.12, "AWS p4de.24xlarge on demand / 8 GPUs, assumption"),
    GpuType("H100-80GB", 3.0, 80, 6.88, "AWS p5.48xlarge on demand / 8 GPUs, assumption"),
)
REFERENCE_GPU = "RTX6000-Ada"  # the paper's GPU: speeds and the stage-1 figure are relative to it


def gpu_type_by_name(name: str) -> GpuType:
    """Case-, dash- and space-insensitive; a unique prefix is enough ("a100", "h100", "rtx6000")."""
    wanted = _norm(name)
    exact = [g for g in GPU_TYPES if _norm(g.name) == wanted]
    matches = exact or [g for g in GPU_TYPES if _norm(g.name).startswith(wanted)]
    if len(matches) != 1 or not wanted:
        known = ", ".join(g.name for g in GPU_TYPES)
        raise ValueError(f"unknown GPU type '{name}'; known types: {known} (speeds are relative to {REFERENCE_GPU};"
                         f" for another GPU pick the closest and pass --price-per-gpu-hour)")
    return matches[0]


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


@dataclass(frozen=True)
class Workload:
    """The paper's figures and the throughput constants; `basis` says where each comes from."""

    # Paper (docs/DESIGN.md section 1, the paper's scale).
    stage1_steps: int = 200_000
    stage1_global_batch: int = 512
    stage1_gpu_hours_reference: float = 770.0  # about 4 days on 8 x RTX 6000 Ada
    stage2_steps: int = 100_000
    stage2_batch: int = 64
    recipe_gpus: int = 8
    images_after_prefilter: int = 40_000_000
    captions: int = 6_000_000
    # Assumptions.
    metadata_rows: int = 52_000_000  # rows read by prepare_metadata (LAION-2B-en-aesthetic scale)
    metadata_rows_per_s_per_cpu: float = 200_000.0  # pyarrow scan + filter
    download_urls_per_s_per_process: float = 1350.0 / 16  # img2dataset README: 1350/s on 16 cores (measured)
    download_success_rate: float = 0.6  # LAION link rot: share of URLs that still give an image
    clip_images_per_s_per_gpu: float = 500.0  # ViT-L/14 at 224 px, fp16, on the reference GPU
    clip_images_per_s_per_cpu: float = 4.0  # the same on one CPU core, fp32
    caption_lines_per_s_per_cpu: float = 20_000.0  # streaming JSON parse and join
    # Per-sample cost of stage 2 relative to stage 1 (3B LLM over 77 + ~227 tokens vs. the frozen SD 2.1 UNet
    # at 48 x 48 latents; bf16 speed-up not credited): a conservative FLOP-ratio estimate.
    stage2_relative_cost_per_sample: float = 2.0
    eval_images: int = 30_000  # COCO 2014 val, 30K (paper)
    caption_images_per_s_per_gpu: float = 2.0  # 3B LLM, beam 4, up to 300 new tokens
    sd21_seconds_per_image: float = 2.5  # SD 2.1 512 px, 50 steps with CFG, reference GPU
    sd35_seconds_per_image: float = 6.0  # SD 3.5 Medium 1024 px, 40 steps with CFG, reference GPU
    caption_fid_cfg_values: int = 4  # CFG 1, 2, 3, 4 (paper Table 1)
    recon_fid_cfg_values: int = 4  # CFG 1, 2, 3, 4 (the paper's scaling table), 50 DDPM steps each
    vqa_images: int = 45_550  # VQAv2 val 40,504 + OK-VQA val 5,046 images, captioned once
    vqa_questions: int = 219_400  # VQAv2 val 214,354 + OK-VQA val 5,046
    vqa_shot_settings: int = 3  # 0-, 4-, 32-shot
    vqa_answers_per_s_per_gpu: float = 20.0  # text-only LLM answering from captions, batched


@dataclass(frozen=True)
class StepEstimate:
    step: str
    resources: str  # what the step declares for this config (`Step.work`)
    work: str
    gpu_hours: float
    cpu_hours: float
    wall_hours: float
    cost_usd: float
    basis: str


@dataclass(frozen=True)
class CostPlan:
    preset: str
    gpu: GpuType
    gpus: float
    price_per_gpu_hour: float
    price_per_cpu_hour: float
    steps: tuple[StepEstimate, ...]
    warnings: tuple[str, ...]

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.steps)

    @property
    def cpu_hours(self) -> float:
        return sum(s.cpu_hours for s in self.steps)

    @property
    def wall_hours(self) -> float:
        return sum(s.wall_hours for s in self.steps)  # steps run one after another

    @property
    def cost_usd(self) -> float:
        return sum(s.cost_usd for s in self.steps)


@dataclass(frozen=True)
class Job:
    """What one step has to do at the paper's scale (the cost model's side; its resources are the step's own
    declaration). GPU work is given in hours of the reference GPU, CPU work in CPU-hours."""

    work: str
    basis: str
    reference_gpu_hours: float = 0.0
    cpu_hours: float = 0.0


def make_cost_plan(config: PipelineConfig, *, gpu_type: str = "L40S", gpus: int | None = None,
                   price_per_gpu_hour: float | None = None, price_per_cpu_hour: float = 0.05,
                   workload: Workload | None = None) -> CostPlan:
    """`gpus`: GPUs for every step that declares GPUs; None means what each step declares (paper: 8).

    Each row's resources are the step's declared work for this config (`Step.work`: its task and worker pools),
    the same declarations the step runs on and the cluster preflight checks; the GPU-hours and CPU-hours come
    from `Workload` (the paper's figures and stated rates)."""
    if config.preset != "paper":
        raise ValueError(f"vlv plan estimates the paper-scale run (--preset paper); the '{config.preset}' preset "
                         "runs on a CPU in minutes (make run)")
    if gpus is not None and gpus <= 0:
        raise ValueError(f"--gpus must be > 0, got {gpus}")
    if price_per_gpu_hour is not None and price_per_gpu_hour < 0:
        raise ValueError(f"--price-per-gpu-hour must be >= 0, got {price_per_gpu_hour}")
    if price_per_cpu_hour < 0:
        raise ValueError(f"--price-per-cpu-hour must be >= 0, got {price_per_cpu_hour}")
    gpu = gpu_type_by_name(gpu_type)
    workload = workload or Workload()
    price = gpu.usd_per_gpu_hour if price_per_gpu_hour is None else price_per_gpu_hour
    declared = {step.name: step.work(getattr(config, step.name)) for step in pipeline_steps()}
    headline_gpus = gpus or declared["train_stage1"].gpus or workload.recipe_gpus
    warnings: list[str] = []
    estimates = []
    for name, work in declared.items():
        job = _job(name, config, work, workload, gpu, headline_gpus, warnings)
        if job is None:
            continue
        gpu_hours = job.reference_gpu_hours / gpu.relative_speed
        used_gpus = gpus or work.gpus
        if gpu_hours and not used_gpus:
            used_gpus = headline_gpus
            warnings.append(f"{name} declares no GPU in this config: the estimate assumes {used_gpus:g} GPUs")
        elif gpu_hours and gpus and gpus != work.gpus and work.pool_of_kind("train_workers"):
            warnings.append(f"{name}: {gpus} GPUs instead of the config's {work.gpus:g}; keep the global batch "
                            f"(--set {name}.ray_train.num_workers=..., micro batch x accumulation adjusted); "
                            "GPU-hours assume linear scaling")
        wall = gpu_hours / used_gpus if gpu_hours else job.cpu_hours / max(_working_cpus(work), 1e-9)
        estimates.append(StepEstimate(name, _describe_resources(work), job.work, gpu_hours, job.cpu_hours, wall,
                                      gpu_hours * price + job.cpu_hours * price_per_cpu_hour, job.basis))
    if gpu.memory_gb < 48:
        warnings.append(f"{gpu.name} has {gpu.memory_gb} GB: stage 1's 64 images per GPU were run on 48 GB cards; "
                        "expect a smaller per-GPU batch with more gradient accumulation")
    return CostPlan(config.preset, gpu, headline_gpus, price, price_per_cpu_hour, tuple(estimates), tuple(warnings))


def _working_cpus(work: StepWork) -> float:
    """The CPUs a step's CPU work runs on: its worker pools when it has any, else its own task."""
    if not work.pools:
        return work.task.num_cpus
    return sum(pool.count * max(pool.cpus, 1.0 if pool.kind == "processes" else 0.0) for pool in work.pools)


def _describe_resources(work: StepWork) -> str:
    """`0.5 CPU task + 8 actors x 4 CPU, 1 GPU`: the declared task (when it asks for anything) and pools."""
    kinds = {"actors": "actors", "tasks": "tasks", "train_workers": "train workers", "processes": "processes"}
    parts = [f"{work.task.num_cpus:g} CPU task"] if work.task.num_cpus or not work.pools else []
    for pool in work.pools:
        gpus = f", {pool.gpus:g} GPU" if pool.gpus else ""
        parts.append(f"{pool.count} {kinds[pool.kind]} x {pool.cpus:g} CPU{gpus}")
    return " + ".join(parts)


def _job(name: str, config: PipelineConfig, work: StepWork, workload: Workload, gpu: GpuType, gpus: float,
         warnings: list[str]) -> Job | None:
    """The paper-scale work of step `name` (None: a step with nothing to price, the arena's judge runs outside)."""
    images = int(workload.images_after_prefilter * workload.download_success_rate)
    if name == "prepare_metadata":
        return Job(f"{_short_count(workload.metadata_rows)} rows -> ~{_short_count(workload.images_after_prefilter)}",
                   "paper: ~40M after pre-filter; scan rate assumed",
                   cpu_hours=workload.metadata_rows / workload.metadata_rows_per_s_per_cpu / 3600)
    if name == "download":
        processes = _working_cpus(work)
        wall_hours = workload.images_after_prefilter / (workload.download_urls_per_s_per_process * processes) / 3600
        return Job(f"{_short_count(workload.images_after_prefilter)} URLs, {config.download.image_size} px",
                   "img2dataset README: 1350 URLs/s per 16 cores (measured)", cpu_hours=wall_hours * processes)
    if name == "aesthetic_filter":
        scored = f"{_short_count(images)} images ({workload.download_success_rate:.0%} of URLs)"
        if work.gpus:
            return Job(scored, "CLIP ViT-L/14 rate assumed",
                       reference_gpu_hours=images / workload.clip_images_per_s_per_gpu / 3600)
        job = Job(scored, "CLIP ViT-L/14 on CPU, rate assumed",
                  cpu_hours=images / workload.clip_images_per_s_per_cpu / 3600)
        gpu_hours = images / workload.clip_images_per_s_per_gpu / 3600 / gpu.relative_speed
        warnings.append(
            f"aesthetic_filter asks for no GPU: ~{job.cpu_hours / _working_cpus(work) / 24:,.0f} days on "
            f"{_working_cpus(work):g} CPU cores; with GPUs it is ~{gpu_hours:,.0f} GPU-hours: --set "
            f"aesthetic_filter.gpus_per_actor=1 --set aesthetic_filter.num_actors={gpus:g}")
        return job
    if name == "ingest_captions":
        return Job(f"{_short_count(workload.captions)} Gemini captions",
                   "paper: ~6M captions; parse rate assumed",
                   cpu_hours=workload.captions / workload.caption_lines_per_s_per_cpu / 3600)
    reference_seconds_per_sample = (workload.stage1_gpu_hours_reference * 3600
                                    / (workload.stage1_steps * workload.stage1_global_batch))
    if name in ("train_stage1", "train_stage2"):
        section = getattr(config, name)
        deepspeed, steps = section.deepspeed, section.loop.total_steps
        samples = steps * deepspeed.global_batch * (1.0 if name == "train_stage1"
                                                    else workload.stage2_relative_cost_per_sample)
        basis = ("paper: ~770 GPU-h per 200K x 512 on RTX 6000 Ada" if name == "train_stage1"
                 else f"stage-1 s/sample x {workload.stage2_relative_cost_per_sample:g} (assumed)")
        return Job(f"{_short_count(steps)} steps x {deepspeed.global_batch}, ZeRO-{deepspeed.zero_stage} "
                   f"{deepspeed.precision}", basis, reference_gpu_hours=reference_seconds_per_sample * samples / 3600)
    caption_hours = workload.eval_images / workload.caption_images_per_s_per_gpu / 3600
    if name == "caption_eval":
        return Job(f"{_short_count(workload.eval_images)} COCO captions, beam 4", "caption rate assumed",
                   reference_gpu_hours=caption_hours)
    if name == "eval_fid":
        recon_hours = workload.recon_fid_cfg_values * workload.eval_images * workload.sd21_seconds_per_image / 3600
        caption_fid_hours = workload.caption_fid_cfg_values * (
            caption_hours + workload.eval_images * workload.sd35_seconds_per_image / 3600)
        return Job(f"{workload.recon_fid_cfg_values} recon + {workload.caption_fid_cfg_values} caption CFG x "
                   f"{_short_count(workload.eval_images)}",
                   "SD 2.1 / SD 3.5 rates assumed", reference_gpu_hours=recon_hours + caption_fid_hours)
    if name == "eval_vqa":
        vqa_hours = (workload.vqa_images / workload.caption_images_per_s_per_gpu
                     + workload.vqa_shot_settings * workload.vqa_questions / workload.vqa_answers_per_s_per_gpu) / 3600
        return Job(f"{workload.vqa_shot_settings} shots x {_short_count(workload.vqa_questions)} questions",
                   "caption + answer rates assumed",
                   reference_gpu_hours=vqa_hours)
    if name == "report":
        return Job("tables and plots", "negligible", cpu_hours=0.05)
    return None


def _short_count(count: float) -> str:
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}".rstrip("0").rstrip(".") + unit
    return f"{count:g}"


def format_cost_plan(plan: CostPlan) -> str:
    head = (f"VLV plan, preset '{plan.preset}': {plan.gpus:g} x {plan.gpu.name} (speed {plan.gpu.relative_speed:g} "
            f"x {REFERENCE_GPU}, assumed), ${plan.price_per_gpu_hour:.2f}/GPU-h, ${plan.price_per_cpu_hour:.3f}/CPU-h")
    columns = f"{'step':<17}{'resources':<41}{'work':<33}{'GPU-h':>8}{'CPU-h':>8}{'wall h':>8}{'cost $':>10}  basis"
    lines = [head, "", columns, "-" * len(columns)]
    for s in plan.steps:
        lines.append(f"{s.step:<17}{s.resources:<41}{s.work:<33}{s.gpu_hours:>8,.1f}{s.cpu_hours:>8,.1f}"
                     f"{s.wall_hours:>8,.1f}{s.cost_usd:>10,.0f}  {s.basis}")
    lines.append("-" * len(columns))
    lines.append(f"{'total':<91}{plan.gpu_hours:>8,.1f}{plan.cpu_hours:>8,.1f}{plan.wall_hours:>8,.1f}"
                 f"{plan.cost_usd:>10,.0f}  (wall: steps in sequence)")
    lines.append("resources: what each step declares for this config (its task and worker pools)")
    lines.append(f"GPU price basis: {plan.gpu.price_basis}" if plan.price_per_gpu_hour == plan.gpu.usd_per_gpu_hour
                 else "GPU price: --price-per-gpu-hour")
    lines.extend(f"note: {w}" for w in plan.warnings)
    return "\n".join(lines)
