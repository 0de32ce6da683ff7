"""Image tensors in and out of the models, in torch (no hub processor download needed).

Batches carry images as uint8 (B, H, W, 3), the way the data loader decodes them. Two views are made from it:
the Florence-2 processor's view (bicubic resize to its square size, x/255, ImageNet mean/std) and the VAE's
view ([-1, 1]). Generated images come back as uint8 (B, H, W, 3) for grids and FID.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Florence-2 preprocessor_config.json: image_mean / image_std (ImageNet), rescale_factor 1/255, resample bicubic.
FLORENCE_IMAGE_MEAN = (0.485, 0.456, 0.406)
FLORENCE_IMAGE_STD = (0.229, 0.224, 0.225)


def check_uint8_images(images: torch.Tensor, image_size: int | None = None) -> None:
    """A ValueError that says what was expected, before a shape error deep inside a convolution."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        got = (f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__)
        raise ValueError(f"images must be a uint8 tensor of shape (batch, height, width, 3); got {got}")
    if image_size is not None and tuple(images.shape[1:3]) != (image_size, image_size):
        raise ValueError(f"images must be {image_size}x{image_size} (the model config's image_size); got "
                         f"{images.shape[1]}x{images.shape[2]}: resize the shorter side and centre-crop first")


def florence_pixels(images: torch.Tensor, size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B,H,W,3) -> normalised (B,3,size,size), what Florence2Processor gives the vision tower."""
    pixels = images.permute(0, 3, 1, 2).to(torch.float32)
    if tuple(pixels.shape[-2:]) != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        pixels = pixels.clamp(0.0, 255.0)  # the processor resizes uint8 images, so values stay in range
    pixels = pixels / 255.0
    mean = torch.tensor(FLORENCE_IMAGE_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(FLORENCE_IMAGE_STD, device=pixels.device).view(1, 3, 1, 1)
    return ((pixels - mean) / std).to(dtype)


def vae_pixels(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B,H,W,3) -> (B,3,H,W) in [-1, 1], the range the SD VAE was trained on."""
    return (images.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0).to(dtype)


def pixels_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [-1, 1] -> uint8 (B,H,W,3), rounding to nearest."""
    scaled = ((pixels.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
