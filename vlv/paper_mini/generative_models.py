"""Miniature diffusion pipelines and LLM of the paper preset, each saved in the exact format the paper preset loads.

- SD 2.1 base: a `StableDiffusionPipeline.save_pretrained` folder (model_index.json, unet/, vae/, text_encoder/,
  tokenizer/, scheduler/, feature_extractor/) of the `sd21_base_mini` architecture, with SD 2.1 base's own
  scheduler (PNDM, scaled-linear betas 0.00085..0.012, epsilon) and the real CLIP tokenizer (pads with "!").
- SD 3.5 Medium: a `StableDiffusion3Pipeline.save_pretrained` folder (MMDiT transformer with dual-attention and
  RMS-norm layers, 16-channel VAE with shift, two CLIP text encoders with projections, a T5 encoder, flow-matching
  Euler scheduler with shift 3) with SD 3.5 Medium's settings at miniature sizes.
- Qwen2.5: a `Qwen2ForCausalLM` folder of the `qwen2.5_3b_mini` architecture with the offline Qwen2 tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlv.models.arch_configs import clip_text_config, llm_config, unet_config, vae_config
from vlv.models.clip_text import SD2_PAD, build_clip_tokenizer
from vlv.models.loading import seeded_init

SD21_ARCH = "sd21_base_mini"
QWEN_ARCH = "qwen2.5_3b_mini"
QWEN_BPE_SIZE = 768  # byte-level BPE ids; Qwen2.5's 22 added tokens follow from <|endoftext|> = 768
# stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json
SD21_SCHEDULER = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                  "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
# SD 2.1 base's feature_extractor/preprocessor_config.json (CLIP ViT image processor of its safety checker).
SD21_FEATURE_EXTRACTOR = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                          "image_mean": [0.48145466, 0.4578275, 0.40821073],
                          "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}

# SD 3.5 Medium's component configs with only the sizes changed (widths, depths, heads; the T5 vocabulary).
SD35_TRANSFORMER = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 2, "attention_head_dim": 16,
                    "num_attention_heads": 2, "joint_attention_dim": 32, "caption_projection_dim": 32,
                    "pooled_projection_dim": 32, "out_channels": 16, "pos_embed_max_size": 384,
                    "dual_attention_layers": (0,), "qk_norm": "rms_norm"}
SD35_VAE = {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [8, 16, 32, 32], "layers_per_block": 2,
            "act_fn": "silu", "latent_channels": 16, "norm_num_groups": 8, "sample_size": 1024,
            "scaling_factor": 1.5305, "shift_factor": 0.0609, "use_quant_conv": False, "use_post_quant_conv": False,
            "mid_block_add_attention": True, "force_upcast": True}
SD35_CLIP_L = {"hidden_size": 16, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "projection_dim": 16, "hidden_act": "quick_gelu", "vocab_size": 49408, "max_position_embeddings": 77,
               "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}
SD35_CLIP_G = {**SD35_CLIP_L, "hidden_act": "gelu"}
SD35_T5 = {"d_model": 32, "d_ff": 64, "num_layers": 2, "num_heads": 2, "d_kv": 16, "feed_forward_proj": "gated-gelu",
           "dense_act_fn": "gelu_new", "is_gated_act": True, "relative_attention_num_buckets": 32,
           "relative_attention_max_distance": 128, "layer_norm_epsilon": 1e-6}
SD35_T5_VOCAB = 512  # Unigram pieces before the 100 sentinels
SD35_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}


def write_sd21(out_dir: Path, seed: int) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextModel

    with seeded_init(seed):
        unet = UNet2DConditionModel.from_config(unet_config(SD21_ARCH))
    with seeded_init(seed + 1):
        vae = AutoencoderKL.from_config(vae_config(SD21_ARCH))
    with seeded_init(seed + 2):
        text_encoder = CLIPTextModel(clip_text_config(SD21_ARCH))
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(pad_token=SD2_PAD), unet=unet,
        scheduler=PNDMScheduler.from_config(SD21_SCHEDULER), safety_checker=None,
        feature_extractor=CLIPImageProcessor(**SD21_FEATURE_EXTRACTOR), requires_safety_checker=False)
    pipeline.save_pretrained(str(out_dir))
    # The published file also lists `clip_sample`, which PNDMScheduler ignores: write it as published.
    scheduler_file = out_dir / "scheduler" / "scheduler_config.json"
    written = json.loads(scheduler_file.read_text())
    scheduler_file.write_text(json.dumps({**written, **SD21_SCHEDULER}, indent=2, sort_keys=True) + "\n")


def write_sd35(out_dir: Path, texts: list[str], seed: int) -> None:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from vlv.paper_mini.offline_tokenizers import write_t5_tokenizer

    t5_dir = out_dir.parent / f".{out_dir.name}-t5-tokenizer"
    t5_size = write_t5_tokenizer(t5_dir, texts, SD35_T5_VOCAB)
    with seeded_init(seed):
        transformer = SD3Transformer2DModel(**SD35_TRANSFORMER)
    with seeded_init(seed + 1):
        vae = AutoencoderKL(**SD35_VAE)
    with seeded_init(seed + 2):
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**SD35_CLIP_L))
    with seeded_init(seed + 3):
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**SD35_CLIP_G))
    with seeded_init(seed + 4):
        t5 = T5EncoderModel(T5Config(vocab_size=t5_size, **SD35_T5))
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SD35_SCHEDULER), vae=vae,
        text_encoder=clip_l, tokenizer=build_clip_tokenizer(pad_token="<|endoftext|>"), text_encoder_2=clip_g,
        tokenizer_2=build_clip_tokenizer(pad_token=SD2_PAD), text_encoder_3=t5,
        tokenizer_3=AutoTokenizer.from_pretrained(str(t5_dir)))
    pipeline.save_pretrained(str(out_dir))
    for stale in sorted(t5_dir.iterdir()):
        stale.unlink()
    t5_dir.rmdir()


def write_qwen(out_dir: Path, tokenizer_dir: Path, eos_token_id: int, seed: int) -> None:
    """Qwen2ForCausalLM of the mini arch, with the tokenizer files of `tokenizer_dir` beside it."""
    from transformers import AutoTokenizer, GenerationConfig, Qwen2ForCausalLM

    config = llm_config(QWEN_ARCH)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if config.eos_token_id != eos_token_id or len(tokenizer) > config.vocab_size:
        raise RuntimeError(f"{QWEN_ARCH}.json (eos {config.eos_token_id}, {config.vocab_size} embeddings) does not "
                           f"fit the offline tokenizer (eos {eos_token_id}, {len(tokenizer)} ids)")
    with seeded_init(seed):
        model = Qwen2ForCausalLM(config)
    # Qwen2.5 base's generation_config.json: greedy by default, stop at <|endoftext|>.
    model.generation_config = GenerationConfig(bos_token_id=eos_token_id, eos_token_id=eos_token_id,
                                               do_sample=False, max_new_tokens=2048)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    for name in ("vocab.json", "merges.txt"):
        (out_dir / name).write_bytes((tokenizer_dir / name).read_bytes())
