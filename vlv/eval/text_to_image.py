"""Text-to-image pipelines for caption FID (paper Table 1): captions in, uint8 images out.

- `sd21`: diffusers `StableDiffusionPipeline` from a local folder or hub id (stabilityai/stable-diffusion-2-1-base);
- `sd35_medium`: `StableDiffusion3Pipeline` (stabilityai/stable-diffusion-3.5-medium, the paper's choice), in
  bfloat16 as its model card runs it: float16 is refused, because its T5-XXL text encoder overflows in float16;
- `tiny`: a `StableDiffusionPipeline` assembled from the tiny SD components of `vlv/models` (seeded random UNet,
  VAE and CLIP text encoder) with the offline CLIP tokenizer and a DDIM scheduler on the SD 2.1 schedule: the
  real diffusers code path at toy width, its images mean nothing.
Guidance 1 means no classifier-free guidance in both diffusers pipelines (they guide only when scale > 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from vlv.engine.storage import local_weights

TextToImageModel = Literal["sd21", "sd35_medium", "tiny"]
TEXT_TO_IMAGE_MODELS = ("sd21", "sd35_medium", "tiny")
_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


@dataclass(frozen=True)
class TextToImageSpec:
    """How to build the pipeline in any process (picklable; each Ray worker builds its own)."""

    model: TextToImageModel = "sd21"
    weights: str = ""  # local folder or hub id (sd21 / sd35_medium); unused for tiny
    image_size: int = 512
    num_steps: int = 40
    dtype: str = "float32"
    seed: int = 0  # tiny: the random init

    def __post_init__(self) -> None:
        if self.model not in TEXT_TO_IMAGE_MODELS:
            raise ValueError(f"text-to-image model must be one of {', '.join(TEXT_TO_IMAGE_MODELS)}, got "
                             f"{self.model!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"text-to-image dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.num_steps < 1 or self.image_size < 8 or self.image_size % 8:
            raise ValueError(f"text-to-image num_steps must be >= 1 and image_size a multiple of 8, got "
                             f"{self.num_steps} and {self.image_size}")
        if self.model == "sd35_medium" and self.dtype == "float16":
            raise ValueError("SD 3.5 Medium in float16: its T5-XXL text encoder overflows (NaN or black images); "
                             "use dtype bfloat16, as its model card does (or float32)")


def build_text_to_image(spec: TextToImageSpec, device: str = "cpu") -> Any:
    import torch

    dtype = getattr(torch, _DTYPES[spec.dtype])
    if spec.model == "tiny":
        pipeline = build_tiny_pipeline(spec.seed)
    elif spec.model == "sd21":
        from diffusers import StableDiffusionPipeline

        pipeline = StableDiffusionPipeline.from_pretrained(local_weights(spec.weights), torch_dtype=dtype,
                                                           safety_checker=None,
                                                           feature_extractor=None, requires_safety_checker=False)
    else:
        from diffusers import StableDiffusion3Pipeline

        pipeline = StableDiffusion3Pipeline.from_pretrained(local_weights(spec.weights), torch_dtype=dtype)
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def build_tiny_pipeline(seed: int) -> Any:
    """StableDiffusionPipeline around the tiny SD parts (seeded), the offline CLIP tokenizer and DDIM."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from vlv.models.clip_text import build_clip_text_encoder, build_clip_tokenizer
    from vlv.models.diffusion import build_diffusion

    diffusion = build_diffusion(arch="tiny_sd", weights=None, init="random", seed=seed)
    text_encoder = build_clip_text_encoder(arch="tiny_sd", weights=None, init="random", seed=seed + 1).model
    return StableDiffusionPipeline(
        vae=diffusion.vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(), unet=diffusion.unet,
        scheduler=DDIMScheduler.from_config(diffusion.schedule), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def generate_from_captions(pipeline: Any, captions: Sequence[str], *, spec: TextToImageSpec, guidance_scale: float,
                           seed: int) -> list[np.ndarray]:
    """uint8 (H, W, 3) images, one per caption; the same seed gives the same starting noise for every scale."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    output = pipeline(prompt=list(captions), height=spec.image_size, width=spec.image_size,
                      num_inference_steps=spec.num_steps, guidance_scale=guidance_scale, generator=generator,
                      output_type="np")
    images = np.asarray(output.images, dtype=np.float32)  # (B, H, W, 3) in [0, 1]
    return list((images * 255).round().clip(0, 255).astype(np.uint8))  # as diffusers' numpy_to_pil
