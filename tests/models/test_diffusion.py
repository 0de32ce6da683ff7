"""The frozen diffusion decoder: SD 2.1 noise schedule, the loss recomputed by hand, the DDPM and DDIM samplers."""

from __future__ import annotations

from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F

from vlv.models.diffusion import build_diffusion
from vlv.models.image_inputs import pixels_to_uint8, vae_pixels
from vlv.testing.builders import uint8_images


@pytest.fixture(scope="module")
def diffusion():
    return build_diffusion(arch="tiny_sd", weights=None, init="random", seed=0)


def _sd21_alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2  # scaled_linear
    return torch.cumprod(1.0 - betas, dim=0)


def test_schedule_is_sd21_base(diffusion):
    assert diffusion.num_train_timesteps == 1000
    assert diffusion.latent_scale == pytest.approx(0.18215)
    assert torch.allclose(diffusion.noise_scheduler.alphas_cumprod, _sd21_alphas_cumprod(), rtol=1e-6)


def test_denoising_loss_equals_the_formula(diffusion):
    images = uint8_images(3, 64)
    cond = torch.randn(3, 77, 64, generator=torch.Generator().manual_seed(1))
    pixels = vae_pixels(images)
    loss = diffusion.denoising_loss(pixels, cond, generator=torch.Generator().manual_seed(5))

    generator = torch.Generator().manual_seed(5)  # same draw order: VAE sample, t, noise
    with torch.no_grad():
        latents = diffusion.vae.encode(pixels).latent_dist.sample(generator=generator) * 0.18215
        timesteps = torch.randint(0, 1000, (3,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        alpha = _sd21_alphas_cumprod()[timesteps].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
        expected = F.mse_loss(diffusion.unet(noisy, timesteps, encoder_hidden_states=cond).sample, noise)
    assert latents.shape == (3, 4, 8, 8)  # 64 px / 8, like 384 -> 48 in the paper
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_gradients_flow_through_the_frozen_unet_to_the_conditioning(diffusion):
    cond = torch.randn(2, 77, 64, requires_grad=True)
    diffusion.denoising_loss(vae_pixels(uint8_images(2, 64)), cond, torch.Generator().manual_seed(0)).backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    assert all(p.grad is None for p in diffusion.parameters())


def test_ddim_sampler_steps_and_guidance(diffusion):
    calls: list[tuple[int, int]] = []
    hook = diffusion.unet.register_forward_hook(
        lambda module, args, kwargs, out: calls.append((args[0].shape[0], int(args[1]))), with_kwargs=True)
    cond = torch.randn(2, 77, 64)
    try:
        plain = diffusion.sample(cond, image_size=64, num_steps=3, generator=torch.Generator().manual_seed(0),
                                 sampler="ddim")
        plain_calls, calls[:] = list(calls), []
        guided = diffusion.sample(cond, image_size=64, num_steps=3, guidance_scale=3.0, uncond=torch.zeros(1, 77, 64),
                                  generator=torch.Generator().manual_seed(0), sampler="ddim")
    finally:
        hook.remove()
    assert plain_calls == [(2, 667), (2, 334), (2, 1)]  # DDIM "leading" spacing with steps_offset 1, as SD 2.1
    assert calls == [(4, 667), (4, 334), (4, 1)]  # CFG: unconditional and conditional halves in one batch
    assert plain.dtype == torch.uint8 and plain.shape == guided.shape == (2, 64, 64, 3)
    assert not torch.equal(plain, guided)


def test_ddpm_scheduler_has_the_official_inference_settings(diffusion):
    # the official inference: DDPMScheduler.from_pretrained(<SD 2.1 base>/scheduler), set_timesteps(50), defaults kept
    scheduler = diffusion.sampling_scheduler("ddpm")
    assert type(scheduler).__name__ == "DDPMScheduler"
    assert scheduler.config.variance_type == "fixed_small" and scheduler.config.clip_sample is False
    assert scheduler.config.thresholding is False and scheduler.init_noise_sigma == 1.0
    assert torch.allclose(scheduler.alphas_cumprod, _sd21_alphas_cumprod(), rtol=1e-6)
    scheduler.set_timesteps(50)
    assert scheduler.timesteps.tolist() == list(range(981, 0, -20))  # "leading" spacing, steps_offset 1


def _latent_draws(seed: int, count: int, shape: tuple[int, ...]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        torch.randn(shape, generator=generator)
    return generator.get_state()


def test_ddpm_sampler_is_stochastic_yet_reproducible_with_a_seeded_generator(diffusion):
    cond = torch.randn(2, 77, 64, generator=torch.Generator().manual_seed(2))
    uncond = torch.zeros(1, 77, 64)

    def draw(seed: int, sampler: str = "ddpm", generator: torch.Generator | None = None) -> torch.Tensor:
        generator = generator or torch.Generator().manual_seed(seed)
        return diffusion.sample(cond, image_size=64, num_steps=3, guidance_scale=2.0, uncond=uncond,
                                generator=generator, sampler=sampler)

    torch.manual_seed(123)
    first = draw(7)
    torch.manual_seed(456)  # the global RNG plays no part: the seeded generator fixes everything
    assert torch.equal(draw(7), first)
    assert not torch.equal(draw(8), first)
    # DDPM draws fresh noise at every step from the generator: 1 starting latent + 3 step noises of the latent shape;
    # DDIM draws only the starting latent
    ddpm_generator, ddim_generator = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    draw(7, "ddpm", ddpm_generator)
    ddim = draw(7, "ddim", ddim_generator)
    assert torch.equal(ddpm_generator.get_state(), _latent_draws(7, 1 + 3, (2, 4, 8, 8)))
    assert torch.equal(ddim_generator.get_state(), _latent_draws(7, 1, (2, 4, 8, 8)))
    assert not torch.equal(ddim, first)
    # and that step noise changes the image: the same run with the step noise zeroed gives another result
    import diffusers.schedulers.scheduling_ddpm as ddpm_module

    with patch.object(ddpm_module, "randn_tensor", lambda shape, **kwargs: torch.zeros(shape)):
        noiseless = draw(7)
    assert not torch.equal(noiseless, first)


def test_unknown_sampler_is_refused(diffusion):
    with pytest.raises(ValueError, match="sampler must be one of"):
        diffusion.sample(torch.randn(1, 77, 64), image_size=64, num_steps=2, sampler="euler")


def test_guidance_without_uncond_is_refused(diffusion):
    with pytest.raises(ValueError, match="uncond"):
        diffusion.sample(torch.randn(1, 77, 64), image_size=64, num_steps=2, guidance_scale=2.0)


def test_pixels_round_trip_to_uint8():
    images = uint8_images(2, 16)
    assert torch.equal(pixels_to_uint8(vae_pixels(images)), images)
