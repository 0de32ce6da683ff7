"""Presets are plain functions returning the root config; a variant calls its base and changes a few fields."""

from __future__ import annotations

from typing import Callable

from vlv.config import PipelineConfig
from vlv.models.config import CaptionerConfig, Stage1ModelConfig
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
        # Paper Table 1 generated with SD 3.5 Medium: --set eval_fid.t2i_model=sd35_medium eval_fid.t2i_weights=...
        # Reconstructions as the official inference (stochastic DDPM, 50 steps), over the scaling table's CFG 1-4.
        eval_fid=EvalFidConfig(recon_scheduler="ddpm", recon_num_steps=50, recon_cfg_scales=[1.0, 2.0, 3.0, 4.0],
                               t2i_model="sd21", t2i_num_steps=40, t2i_dtype="float16", cfg_scales=[1.0, 2.0, 3.0, 4.0],
                               generation_batch_size=8, num_workers=8, cpus_per_worker=4.0, gpus_per_worker=1.0),
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


def _tiny_deepspeed(lr: float) -> DeepSpeedConfig:
    """ZeRO-2, fp32 on CPU; 2 workers x micro-batch 2 = global batch 4; a large lr so the loss visibly falls."""
    return DeepSpeedConfig(zero_stage=2, precision="fp32", micro_batch_per_worker=2, global_batch=4,
                           optimizer=AdamWConfig(lr=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01),
                           schedule=LRScheduleConfig(kind="cosine", warmup_steps=1))  # decays over the loop


def _tiny_loop() -> LoopConfig:
    return LoopConfig(total_steps=6, checkpoint_every=3, log_every=1, seed=0)


PRESETS: dict[str, Callable[[], PipelineConfig]] = {"tiny": tiny, "paper": paper}
