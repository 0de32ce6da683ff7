"""`vlv plan`: what each pipeline step asks for, and the GPU-hours, wall time and cost to expect.

Every figure rests on a named basis, printed with the plan:
- the paper's own numbers (stage 1: 200K steps at global batch 512, about 770 GPU-hours on 8 x RTX 6000 Ada;
  stage 2: 100K steps at batch 64; about 40M images after the pre-filter; about 6M Gemini captions);
- measurements published by the tools' authors (img2dataset: 1350 URLs/s on one 16-core machine);
- assumptions, labelled as such (relative GPU speeds, prices, the per-sample cost of stage 2, model throughputs).
Training rows read steps, global batch, precision and GPUs from the config's `train_stage*` sections (the paper's
recipe when a section is missing). GPU-hours are taken as independent of the GPU count (the global batch is kept
with gradient accumulation), so more GPUs shorten the wall time, not the bill. Stages the repository does not
have yet (evaluation, report) appear as the paper's recipe stages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    exists: bool  # a step of this repository's pipeline (False: a recipe stage still to be written)
    resources: str
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


def make_cost_plan(config: PipelineConfig, *, gpu_type: str = "L40S", gpus: int | None = None,
                   price_per_gpu_hour: float | None = None, price_per_cpu_hour: float = 0.05,
                   workload: Workload | None = None) -> CostPlan:
    """`gpus`: GPUs for training and evaluation; None means what the training config asks for (paper: 8)."""
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
    w = workload or Workload()
    stage1, stage2 = _training(config, "train_stage1", w), _training(config, "train_stage2", w)
    used_gpus = gpus or stage1.gpus or w.recipe_gpus
    price = gpu.usd_per_gpu_hour if price_per_gpu_hour is None else price_per_gpu_hour
    pricing = _Pricing(gpu, used_gpus, price, price_per_cpu_hour)
    warnings: list[str] = []
    steps = [_prepare_metadata(config, w, pricing), _download(config, w, pricing),
             _aesthetic_filter(config, w, pricing, warnings), _ingest_captions(config, w, pricing),
             *_recipe_stages(stage1, stage2, w, pricing)]
    if gpu.memory_gb < 48:
        warnings.append(f"{gpu.name} has {gpu.memory_gb} GB: stage 1's 64 images per GPU were run on 48 GB cards; "
                        "expect a smaller per-GPU batch with more gradient accumulation")
    for name, stage in (("train_stage1", stage1), ("train_stage2", stage2)):
        if stage.gpus == 0:
            warnings.append(f"{name} asks for no GPU in this config (ray_train.use_gpu=false): the estimate "
                            f"assumes {used_gpus} GPUs")
        elif used_gpus != stage.gpus:
            warnings.append(f"{name}: {used_gpus} GPUs instead of the config's {stage.gpus:g}; keep the global batch "
                            f"{stage.global_batch} (--set {name}.ray_train.num_workers=..., micro batch x "
                            "accumulation adjusted); GPU-hours assume linear scaling")
    existing = _existing_steps()
    steps = [replace(s, exists=s.step in existing) for s in steps]
    return CostPlan(config.preset, gpu, used_gpus, price, price_per_cpu_hour, tuple(steps), tuple(warnings))


@dataclass(frozen=True)
class _Training:
    """A training stage as configured (or the paper's recipe when the config has no such section)."""

    steps: int
    global_batch: int
    precision: str
    zero_stage: int
    gpus: float  # 0 when the config trains on CPU

    @property
    def samples(self) -> int:
        return self.steps * self.global_batch


def _training(config: PipelineConfig, name: str, w: Workload) -> _Training:
    section = getattr(config, name, None)
    if section is None:
        stage1 = name == "train_stage1"
        return _Training(w.stage1_steps if stage1 else w.stage2_steps,
                         w.stage1_global_batch if stage1 else w.stage2_batch,
                         "fp32" if stage1 else "bf16", 2, w.recipe_gpus)
    ray_train, deepspeed = section.ray_train, section.deepspeed
    gpus = ray_train.num_workers * ray_train.gpus_per_worker if ray_train.use_gpu else 0
    return _Training(section.loop.total_steps, deepspeed.global_batch, deepspeed.precision, deepspeed.zero_stage,
                     gpus)


@dataclass(frozen=True)
class _Pricing:
    gpu: GpuType
    gpus: float
    per_gpu_hour: float
    per_cpu_hour: float

    def gpu_step(self, step: str, resources: str, work: str, reference_gpu_hours: float, basis: str,
                 gpus: float | None = None) -> StepEstimate:
        used = self.gpus if gpus is None else gpus
        gpu_hours = reference_gpu_hours / self.gpu.relative_speed
        return StepEstimate(step, False, resources, work, gpu_hours, 0.0, gpu_hours / used,
                            gpu_hours * self.per_gpu_hour, basis)

    def cpu_step(self, step: str, resources: str, work: str, cpu_hours: float, cpus: float,
                 basis: str) -> StepEstimate:
        return StepEstimate(step, False, resources, work, 0.0, cpu_hours, cpu_hours / cpus,
                            cpu_hours * self.per_cpu_hour, basis)


def _existing_steps() -> set[str]:
    from vlv.pipeline import step_names

    return set(step_names())


def _task_cpus(config: PipelineConfig, step_name: str) -> float:
    """The CPUs the step's Ray task asks for (its own `resources()` declaration)."""
    from vlv.pipeline import step_by_name

    return step_by_name(step_name).resources(getattr(config, step_name)).num_cpus


def _prepare_metadata(config: PipelineConfig, w: Workload, p: _Pricing) -> StepEstimate:
    cfg = config.prepare_metadata
    cpus = _task_cpus(config, "prepare_metadata")
    cpu_hours = w.metadata_rows / w.metadata_rows_per_s_per_cpu / 3600
    return p.cpu_step("prepare_metadata", f"{cpus:g} CPU + {cfg.num_tasks} x {cfg.cpus_per_task:g} CPU tasks",
                      f"{_n(w.metadata_rows)} rows -> ~{_n(w.images_after_prefilter)}", cpu_hours,
                      max(1.0, cfg.num_tasks * cfg.cpus_per_task),
                      "paper: ~40M after pre-filter; scan rate assumed")


def _download(config: PipelineConfig, w: Workload, p: _Pricing) -> StepEstimate:
    cfg = config.download
    urls_per_s = w.download_urls_per_s_per_process * cfg.processes_count
    wall_hours = w.images_after_prefilter / urls_per_s / 3600
    resources = f"{_task_cpus(config, 'download'):g} CPU task, {cfg.processes_count} x {cfg.thread_count} thr"
    return p.cpu_step("download", resources, f"{_n(w.images_after_prefilter)} URLs, {cfg.image_size} px",
                      wall_hours * cfg.processes_count, cfg.processes_count,
                      "img2dataset README: 1350 URLs/s per 16 cores (measured)")


def _aesthetic_filter(config: PipelineConfig, w: Workload, p: _Pricing, warnings: list[str]) -> StepEstimate:
    cfg = config.aesthetic_filter
    task_cpus = _task_cpus(config, "aesthetic_filter")
    images = int(w.images_after_prefilter * w.download_success_rate)
    work = f"{_n(images)} images ({w.download_success_rate:.0%} of URLs)"
    if cfg.gpus_per_actor > 0:
        gpus = cfg.num_actors * cfg.gpus_per_actor
        resources = f"{task_cpus:g} CPU + {cfg.num_actors} actor(s) x {cfg.gpus_per_actor:g} GPU"
        reference_gpu_hours = images / w.clip_images_per_s_per_gpu / 3600
        return p.gpu_step("aesthetic_filter", resources, work, reference_gpu_hours,
                          "CLIP ViT-L/14 rate assumed", gpus=gpus)
    cpus = cfg.num_actors * cfg.cpus_per_actor
    cpu_hours = images / w.clip_images_per_s_per_cpu / 3600
    estimate = p.cpu_step("aesthetic_filter", f"{task_cpus:g} + {cfg.num_actors} actor(s) x {cfg.cpus_per_actor:g} CPU",
                          work, cpu_hours, cpus, "CLIP ViT-L/14 on CPU, rate assumed")
    gpu_hours = images / w.clip_images_per_s_per_gpu / 3600 / p.gpu.relative_speed
    warnings.append(
        f"aesthetic_filter asks for no GPU: ~{estimate.wall_hours / 24:,.0f} days on {cpus:g} CPU cores; "
        f"with GPUs it is ~{gpu_hours:,.0f} GPU-hours: --set aesthetic_filter.gpus_per_actor=1 "
        f"--set aesthetic_filter.num_actors={p.gpus}")
    return estimate


def _ingest_captions(config: PipelineConfig, w: Workload, p: _Pricing) -> StepEstimate:
    cpus = _task_cpus(config, "ingest_captions")
    cpu_hours = w.captions / w.caption_lines_per_s_per_cpu / 3600
    return p.cpu_step("ingest_captions", f"{cpus:g} CPU task", f"{_n(w.captions)} Gemini captions", cpu_hours,
                      cpus, "paper: ~6M captions; parse rate assumed")


def _recipe_stages(stage1: _Training, stage2: _Training, w: Workload, p: _Pricing) -> list[StepEstimate]:
    gpus = f"{p.gpus:g} x {p.gpu.name}"
    reference_seconds_per_sample = w.stage1_gpu_hours_reference * 3600 / (w.stage1_steps * w.stage1_global_batch)
    stage1_hours = reference_seconds_per_sample * stage1.samples / 3600
    stage2_hours = reference_seconds_per_sample * stage2.samples * w.stage2_relative_cost_per_sample / 3600
    caption_hours = w.eval_images / w.caption_images_per_s_per_gpu / 3600
    recon_hours = w.recon_fid_cfg_values * w.eval_images * w.sd21_seconds_per_image / 3600
    caption_fid_hours = w.caption_fid_cfg_values * (caption_hours + w.eval_images * w.sd35_seconds_per_image / 3600)
    vqa_hours = (w.vqa_images / w.caption_images_per_s_per_gpu
                 + w.vqa_shot_settings * w.vqa_questions / w.vqa_answers_per_s_per_gpu) / 3600
    return [
        p.gpu_step("train_stage1", f"{gpus}, ZeRO-{stage1.zero_stage} {stage1.precision}",
                   f"{_n(stage1.steps)} steps x {stage1.global_batch}", stage1_hours,
                   "paper: ~770 GPU-h per 200K x 512 on RTX 6000 Ada"),
        p.gpu_step("train_stage2", f"{gpus}, ZeRO-{stage2.zero_stage} {stage2.precision}",
                   f"{_n(stage2.steps)} steps x {stage2.global_batch}", stage2_hours,
                   f"stage-1 s/sample x {w.stage2_relative_cost_per_sample:g} (assumed)"),
        p.gpu_step("caption_eval", gpus, f"{_n(w.eval_images)} COCO captions, beam 4", caption_hours,
                   "caption rate assumed"),
        p.gpu_step("eval_fid", gpus, f"{w.recon_fid_cfg_values} recon + {w.caption_fid_cfg_values} caption CFG x "
                   f"{_n(w.eval_images)}",
                   recon_hours + caption_fid_hours, "SD 2.1 / SD 3.5 rates assumed"),
        p.gpu_step("eval_vqa", gpus, f"{w.vqa_shot_settings} shots x {_n(w.vqa_questions)} questions", vqa_hours,
                   "caption + answer rates assumed"),
        p.cpu_step("report", "1 CPU", "tables and plots", 0.05, 1.0, "negligible"),
    ]


def _n(count: float) -> str:
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}".rstrip("0").rstrip(".") + unit
    return f"{count:g}"


def format_cost_plan(plan: CostPlan) -> str:
    head = (f"VLV plan, preset '{plan.preset}': {plan.gpus:g} x {plan.gpu.name} (speed {plan.gpu.relative_speed:g} "
            f"x {REFERENCE_GPU}, assumed), ${plan.price_per_gpu_hour:.2f}/GPU-h, ${plan.price_per_cpu_hour:.3f}/CPU-h")
    columns = f"{'step':<17}{'resources':<33}{'work':<31}{'GPU-h':>8}{'CPU-h':>8}{'wall h':>8}{'cost $':>10}  basis"
    lines = [head, "", columns, "-" * len(columns)]
    for s in plan.steps:
        name = s.step if s.exists else f"{s.step}*"
        lines.append(f"{name:<17}{s.resources:<33}{s.work:<31}{s.gpu_hours:>8,.1f}{s.cpu_hours:>8,.1f}"
                     f"{s.wall_hours:>8,.1f}{s.cost_usd:>10,.0f}  {s.basis}")
    lines.append("-" * len(columns))
    lines.append(f"{'total':<81}{plan.gpu_hours:>8,.1f}{plan.cpu_hours:>8,.1f}{plan.wall_hours:>8,.1f}"
                 f"{plan.cost_usd:>10,.0f}  (wall: steps in sequence)")
    lines.append("* a stage of the paper's recipe that is not a step of this pipeline yet")
    lines.append(f"GPU price basis: {plan.gpu.price_basis}" if plan.price_per_gpu_hour == plan.gpu.usd_per_gpu_hour
                 else "GPU price: --price-per-gpu-hour")
    lines.extend(f"note: {w}" for w in plan.warnings)
    return "\n".join(lines)
