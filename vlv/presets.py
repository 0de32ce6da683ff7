"""Presets are plain functions returning the root config; a variant calls its base and changes a few fields."""

from __future__ import annotations

import dataclasses
from typing import Callable

from vlv.models.config import CaptionerConfig, Stage1ModelConfig
from vlv.paper_mini.build import ensure_paper_mini_assets
from vlv.paper_mini.layout import INCEPTION_SHA256, SAMPLES_PER_SHARD, PaperMiniAssets, default_assets_dir
from vlv.pipeline_config import PipelineConfig
from vlv.steps.aesthetic_filter import AestheticFilterConfig
from vlv.steps.caption_eval import CaptionEvalConfig, VqaBenchmarkConfig
from vlv.steps.download import DownloadConfig
from vlv.steps.eval_arena import EvalArenaConfig
from vlv.steps.eval_fid import EvalFidConfig
from vlv.steps.eval_vqa import EvalVqaConfig
from vlv.steps.ingest_captions import IngestCaptionsConfig
from vlv.steps.prepare_metadata import PrepareMetadataConfig
from vlv.steps.report import ReportConfig
from vlv.steps.train_stage1 import TrainStage1Config
from vlv.steps.train_stage2 import TrainStage2Config
from vlv.train.deepspeed_config import AdamWConfig, DeepSpeedConfig, LRScheduleConfig
from vlv.train.loop import LoopConfig
from vlv.train.ray_trainer import RayTrainConfig


def paper() -> PipelineConfig:
    """The paper's sizes and hyper-parameters (the official code's where the paper is silent); data and weights
    come from your paths."""
    return PipelineConfig(
        preset="paper",
        prepare_metadata=PrepareMetadataConfig(source="laion"),
        download=DownloadConfig(image_size=384, processes_count=16, thread_count=64),
        # Every image is scored and kept (the source is LAION-2B-en-aesthetic already); the common 5.0 cut:
        # --set aesthetic_filter.keep=threshold (aesthetic_filter.threshold=5.0 is the default)
        aesthetic_filter=AestheticFilterConfig(model="pretrained", keep="all", batch_size=256, num_actors=8,
                                               cpus_per_actor=4.0, gpus_per_actor=1.0),
        ingest_captions=IngestCaptionsConfig(format="auto"),
        # official config: ZeRO-2 fp32, 64 x 8 GPUs, WarmupCosineLR over 20K steps cycling through the 200K steps
        train_stage1=TrainStage1Config(),
        # paper: bf16, batch 64, lr 1e-5 linear, 100K steps, Qwen2.5-3B; the official optimizer and decay horizon
        train_stage2=TrainStage2Config(),
        # Evaluation data and weights come from your paths (preflight names every one left empty).
        caption_eval=CaptionEvalConfig(max_images=30_000, batch_size=16, num_actors=8, cpus_per_actor=4.0,
                                       gpus_per_actor=1.0),  # COCO 2014 val 30K; VQAv2 + OK-VQA
        # Table 1: captions -> SD 3.5 Medium (eval_fid.t2i_weights: stabilityai/stable-diffusion-3.5-medium or its
        # local folder) in bf16 as its model card runs it, 40 steps, 1024 px (its native size), CFG 1-4; other
        # captioners' files through the same path: eval_fid.other_captioners.
        # Reconstructions as the official inference (stochastic DDPM, 50 steps), over the scaling table's CFG 1-4.
        eval_fid=EvalFidConfig(recon_scheduler="ddpm", recon_num_steps=50, recon_cfg_scales=[1.0, 2.0, 3.0, 4.0],
                               t2i_model="sd35_medium", t2i_num_steps=40, t2i_image_size=1024, t2i_dtype="bfloat16",
                               cfg_scales=[1.0, 2.0, 3.0, 4.0], generation_batch_size=8, num_workers=8,
                               cpus_per_worker=4.0, gpus_per_worker=1.0),
        eval_vqa=EvalVqaConfig(llm="pretrained", llm_dtype="bfloat16", shots=[0, 4, 32], num_workers=8,
                               cpus_per_worker=4.0, gpus_per_worker=1.0),
        # Table 2: 200 COCO images judged by Gemini 2.0 Flash; the judge's output comes from `vlv arena request`
        # and a Batch API job (eval_arena.judge_output); GPT-4o / Qwen2.5-VL-7B captions via other_captioners.
        eval_arena=EvalArenaConfig(num_images=200),
        report=ReportConfig(),
    )


def tiny() -> PipelineConfig:
    """Offline, CPU, minutes: loopback photos, toy models with seeded random weights, generated captions."""
    return PipelineConfig(
        preset="tiny",
        prepare_metadata=PrepareMetadataConfig(source="tiny", min_side=256),
        download=DownloadConfig(image_size=64, samples_per_shard=8, processes_count=1, thread_count=4,
                                timeout_s=5, progress_interval_s=5.0),
        aesthetic_filter=AestheticFilterConfig(model="tiny-random", keep="top_quantile", keep_top_quantile=0.75,
                                               batch_size=8),
        ingest_captions=IngestCaptionsConfig(generate_tiny=True),
        train_stage1=TrainStage1Config(
            model=Stage1ModelConfig.tiny(), deepspeed=_tiny_deepspeed(lr=1e-3), loop=_tiny_loop(),
            ray_train=RayTrainConfig(num_workers=2, use_gpu=False, cpus_per_worker=1.0, max_failures=2),
            shuffle_buffer=8, grid_images=4, grid_sampling_steps=4,
        ),
        train_stage2=TrainStage2Config(
            model=CaptionerConfig.tiny(), deepspeed=_tiny_deepspeed(lr=2e-3), loop=_tiny_loop(),
            ray_train=RayTrainConfig(num_workers=2, use_gpu=False, cpus_per_worker=1.0, max_failures=2),
            shuffle_buffer=8, sample_captions=4,
        ),
        # The tiny sets (8 + 5 scikit-image photos, 28 + 11 questions) are written into caption_eval's output.
        caption_eval=CaptionEvalConfig(tiny_sets=True, vqa=[VqaBenchmarkConfig(name="tiny", exemplar_pool_size=0)],
                                       batch_size=8, sample_rows=4),
        eval_fid=EvalFidConfig(inception_random_seed=0, inception_batch_size=8, recon_num_steps=2,
                               recon_cfg_scales=[1.0, 2.0], t2i_model="tiny",
                               t2i_num_steps=2, t2i_image_size=64, cfg_scales=[1.0, 2.0], generation_batch_size=4,
                               grid_images=4),
        eval_vqa=EvalVqaConfig(llm="tiny-random", shots=[0, 4], max_new_tokens=8, batch_size=16),
        # 6 of the 8 tiny caption-set images x (VLV, the human reference captions); a generated judge file.
        eval_arena=EvalArenaConfig(num_images=6, generate_tiny=True),
        report=ReportConfig(),
    )


def paper_mini() -> PipelineConfig:
    """`paper` with only sizes, step counts, worker counts, CPU resources and paths changed: the paper's code paths,
    model classes, on-disk formats and settings at miniature size, on a CPU in minutes (vlv.paper_mini).

    The assets (miniature models in the paper's formats, LAION-format photo metadata, Gemini output, COCO / VQA
    files) are built once per machine in `$VLV_PAPER_MINI_DIR` (default ~/.cache/vlv/paper_mini/<version>) before
    any step runs. Every model is randomly initialised: the numbers mean nothing.
    """
    assets = PaperMiniAssets(default_assets_dir())
    config = paper()
    config.preset = "paper_mini"
    data = config.prepare_metadata
    data.input_uri, data.serve_folder = str(assets.laion_metadata), str(assets.site)
    config.download = dataclasses.replace(config.download, samples_per_shard=SAMPLES_PER_SHARD, processes_count=1,
                                          thread_count=8)
    config.aesthetic_filter = dataclasses.replace(
        config.aesthetic_filter, clip_model=f"local-dir:{assets.open_clip}", clip_pretrained="",
        predictor_weights=str(assets.aesthetic_predictor), num_actors=1, cpus_per_actor=1.0, gpus_per_actor=0.0)
    config.ingest_captions.source = str(assets.gemini_output)

    stage1 = config.train_stage1
    stage1.model = dataclasses.replace(stage1.model, florence_arch="florence2_large_mini",
                                       florence_weights=str(assets.florence), sd_arch="sd21_base_mini",
                                       sd_weights=str(assets.sd21))
    stage1.deepspeed = _mini_batches(stage1.deepspeed)
    stage1.loop = _mini_loop(stage1.loop)
    stage1.ray_train = _mini_ray_train(stage1.ray_train)
    stage1.shuffle_buffer, stage1.grid_sampling_steps = 8, 2
    stage2 = config.train_stage2
    stage2.model = dataclasses.replace(stage2.model, llm_arch="qwen2.5_3b_mini", llm_weights=str(assets.qwen),
                                       max_new_tokens=24)
    stage2.deepspeed = _mini_batches(stage2.deepspeed)
    stage2.loop = _mini_loop(stage2.loop)
    stage2.ray_train = _mini_ray_train(stage2.ray_train)
    stage2.shuffle_buffer, stage2.sample_captions = 8, 4

    evaluation = config.caption_eval
    evaluation.images_dir, evaluation.captions_json = str(assets.coco_images), str(assets.coco_captions)
    for bench in evaluation.vqa:
        bench.questions_json = str(assets.vqa_file(bench.name, "val", "questions"))
        bench.annotations_json = str(assets.vqa_file(bench.name, "val", "annotations"))
        bench.images_dir = str(assets.coco_images)
        bench.exemplar_questions_json = str(assets.vqa_file(bench.name, "train", "questions"))
        bench.exemplar_annotations_json = str(assets.vqa_file(bench.name, "train", "annotations"))
        bench.exemplar_images_dir = str(assets.coco_train_images)
    evaluation.num_actors, evaluation.cpus_per_actor, evaluation.gpus_per_actor = 1, 1.0, 0.0
    # Caption FID with the miniature SD 3.5 Medium in the paper's bf16 (CPUs run it, emulated where they lack bf16).
    config.eval_fid = dataclasses.replace(
        config.eval_fid, inception_weights=str(assets.inception), inception_sha256=INCEPTION_SHA256,
        recon_num_steps=2, t2i_weights=str(assets.sd35), t2i_num_steps=2, t2i_image_size=256, num_workers=1,
        cpus_per_worker=1.0, gpus_per_worker=0.0)
    config.eval_vqa = dataclasses.replace(config.eval_vqa, llm_path=str(assets.qwen), num_workers=1,
                                          cpus_per_worker=1.0, gpus_per_worker=0.0)
    # No Gemini judge offline: the arena judges with generated scores, as in tiny, so its path runs end to end.
    config.eval_arena = dataclasses.replace(config.eval_arena, num_images=6, generate_tiny=True)
    return config


def _mini_batches(deepspeed: DeepSpeedConfig) -> DeepSpeedConfig:
    """One image per worker and step (2 workers, no accumulation, as the paper's 64 x 8); optimizer, schedule
    kind, precision and ZeRO stage stay the paper's."""
    return dataclasses.replace(deepspeed, micro_batch_per_worker=1, global_batch=2)


def _mini_loop(loop: LoopConfig) -> LoopConfig:
    return dataclasses.replace(loop, total_steps=3, checkpoint_every=2, log_every=1)


def _mini_ray_train(ray_train: RayTrainConfig) -> RayTrainConfig:
    return dataclasses.replace(ray_train, num_workers=2, use_gpu=False)


def _tiny_deepspeed(lr: float) -> DeepSpeedConfig:
    """ZeRO-2, fp32 on CPU; 2 workers x micro-batch 2 = global batch 4; a large lr so the loss visibly falls."""
    return DeepSpeedConfig(zero_stage=2, precision="fp32", micro_batch_per_worker=2, global_batch=4,
                           optimizer=AdamWConfig(lr=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01),
                           schedule=LRScheduleConfig(kind="cosine", warmup_steps=1))  # decays over the loop


def _tiny_loop() -> LoopConfig:
    return LoopConfig(total_steps=6, checkpoint_every=3, log_every=1, seed=0)


PRESETS: dict[str, Callable[[], PipelineConfig]] = {"tiny": tiny, "paper": paper, "paper_mini": paper_mini}


def prepare_preset(config: PipelineConfig) -> None:
    """What a preset needs on this machine before any step runs: paper_mini builds its assets (once per machine)."""
    if config.preset == "paper_mini":
        ensure_paper_mini_assets()
