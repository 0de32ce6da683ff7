"""The frozen Stable Diffusion 2.1 base decoder: the denoising loss that teaches stage 1, and its samplers.

Both UNet and VAE are frozen teachers. Gradients still flow THROUGH the UNet into the conditioning (that is the
whole training signal), so the UNet runs with autograd on; only the VAE encode runs under `no_grad`.
Training noise follows the DDPM schedule of SD 2.1 base (1000 steps, scaled_linear 0.00085..0.012, epsilon
prediction). Sampling runs on the same schedule with classifier-free guidance against the empty-prompt embedding,
with one of two samplers:
- "ddpm" (default): what the official VLV inference does (models/VLV_stage1.py `generate_images`, a
  `DDPMScheduler` loaded from SD 2.1 base's scheduler config with nothing overridden, so diffusers' defaults
  `variance_type="fixed_small"`, "leading" timestep spacing with steps_offset 1; 50 steps give t = 981, 961, ..., 1).
  It is ancestral: each step adds fresh Gaussian noise, drawn here from the caller's seeded generator (the official
  script draws from the global RNG seeded 42 + rank), so a seed fixes the whole trajectory.
- "ddim": deterministic DDIM (eta 0) on the same timesteps; only the starting noise is random.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from vlv.models.arch_configs import noise_schedule_config, unet_config, vae_config
from vlv.models.image_inputs import pixels_to_uint8
from vlv.models.loading import InitMode, freeze, require_weights, seeded_init

if TYPE_CHECKING:  # diffusers is imported where used
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

SamplerName = Literal["ddpm", "ddim"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)


class FrozenDiffusion(nn.Module):
    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, schedule: dict[str, Any]):
        super().__init__()
        from diffusers import DDPMScheduler

        if schedule.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"the VLV loss regresses the noise: prediction_type must be 'epsilon', got "
                             f"{schedule['prediction_type']!r}")
        self.unet = unet
        self.vae = vae
        self.schedule = dict(schedule)
        self.noise_scheduler = DDPMScheduler.from_config(self.schedule)
        freeze(self)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)  # 0.18215 for SD 2.1

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)

    def train(self, mode: bool = True) -> FrozenDiffusion:
        return super().train(False)  # frozen teacher: always eval

    @torch.no_grad()
    def encode_latents(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """[-1,1] pixels -> scaled latents (a sample of the VAE posterior, x 0.18215), as in SD training."""
        posterior = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return posterior.sample(generator=generator) * self.latent_scale

    def predict_noise(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        dtype = self.unet.dtype
        return self.unet(noisy_latents.to(dtype), timesteps, encoder_hidden_states=cond.to(dtype)).sample

    def denoising_loss(self, pixels: torch.Tensor, cond: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE(eps, eps_theta(z_t, t, cond)) with t uniform in [0, 1000) per sample."""
        latents = self.encode_latents(pixels, generator)
        batch = latents.shape[0]
        timesteps = _randint(self.num_train_timesteps, batch, generator, latents.device)
        noise = _randn(latents.shape, generator, latents.device, latents.dtype)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        predicted = self.predict_noise(noisy, timesteps, cond)
        return F.mse_loss(predicted.float(), noise.float())

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.latent_scale).sample

    def sampling_scheduler(self, sampler: SamplerName) -> DDPMScheduler | DDIMScheduler:
        """A fresh diffusers scheduler of the given kind on this model's noise schedule (no other overrides)."""
        from diffusers import DDIMScheduler, DDPMScheduler

        if sampler == "ddpm":
            return DDPMScheduler.from_config(self.schedule)
        if sampler == "ddim":
            return DDIMScheduler.from_config(self.schedule)
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, *, image_size: int, num_steps: int = 50, guidance_scale: float = 1.0,
               uncond: torch.Tensor | None = None, generator: torch.Generator | None = None,
               sampler: SamplerName = "ddpm") -> torch.Tensor:
        """Images (uint8, B x H x W x 3) from conditioning (B, 77, D); CFG when guidance_scale != 1.

        `uncond` is the empty-prompt embedding (1 or B, 77, D), needed for guidance. Every random draw (the
        starting latents, and DDPM's per-step noise) comes from `generator`, in that order.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        guided = guidance_scale != 1.0
        if guided and uncond is None:
            raise ValueError("classifier-free guidance (guidance_scale != 1) needs `uncond`, the empty-prompt "
                             "embedding (ClipTextOnEmbeddings.empty_prompt_embedding)")
        if image_size % self.vae_downsample:
            raise ValueError(f"image_size must be a multiple of {self.vae_downsample}, got {image_size}")
        scheduler = self.sampling_scheduler(sampler)
        scheduler.set_timesteps(num_steps, device=cond.device)
        batch, side = cond.shape[0], image_size // self.vae_downsample
        shape = (batch, self.unet.config.in_channels, side, side)
        latents = _randn(shape, generator, cond.device, torch.float32) * scheduler.init_noise_sigma
        if guided:
            assert uncond is not None
            context = torch.cat([uncond.to(cond.dtype).expand(batch, -1, -1), cond])
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(latents, t)
            if guided:
                eps_uncond, eps_cond = self.predict_noise(torch.cat([model_in, model_in]), t, context).chunk(2)
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            else:
                eps = self.predict_noise(model_in, t, cond)
            latents = scheduler.step(eps.float(), t, latents, generator=generator).prev_sample
        return pixels_to_uint8(self.decode_latents(latents))


def build_diffusion(*, arch: str, weights: str | None, init: InitMode, seed: int,
                    weights_field: str = "sd_weights") -> FrozenDiffusion:
    """UNet + VAE from `<weights>/{unet,vae}` (diffusers layout) or seeded random init of `arch`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if init == "pretrained":
        path = require_weights(weights, weights_field, "the Stable Diffusion 2.1 base folder "
                               "(stabilityai/stable-diffusion-2-1-base, with unet/ and vae/ subfolders)")
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
    else:
        with seeded_init(seed):
            unet = UNet2DConditionModel.from_config(unet_config(arch))
            vae = AutoencoderKL.from_config(vae_config(arch))
    return FrozenDiffusion(unet, vae, noise_schedule_config(arch))


def _randn(shape, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def _randint(high: int, size: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    if generator is None:
        return torch.randint(0, high, (size,), device=device)
    return torch.randint(0, high, (size,), generator=generator, device=generator.device).to(device)
