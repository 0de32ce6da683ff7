"""Image tensors in and out of the models (no hub processor download needed).

Batches carry images as uint8 (B, H, W, 3), the way the data loader decodes them. Two views are made from it:
the Florence-2 processor's view and the VAE's view ([-1, 1]). Generated images come back as uint8 (B, H, W, 3)
for grids and FID.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# Florence-2 preprocessor_config.json (CLIPImageProcessor): resize to size x size with resample 3 (PIL bicubic),
# rescale_factor 0.00392156862745098 (= 1/255), ImageNet image_mean / image_std, no centre crop.
FLORENCE_IMAGE_MEAN = (0.485, 0.456, 0.406)
FLORENCE_IMAGE_STD = (0.229, 0.224, 0.225)
FLORENCE_RESCALE_FACTOR = 1 / 255


def check_uint8_images(images: torch.Tensor, image_size: int | None = None) -> None:
    """A ValueError that says what was expected, before a shape error deep inside a convolution."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        got = (f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__)
        raise ValueError(f"images must be a uint8 tensor of shape (batch, height, width, 3); got {got}")
    if image_size is not None and tuple(images.shape[1:3]) != (image_size, image_size):
        raise ValueError(f"images must be {image_size}x{image_size} (the model config's image_size); got "
                         f"{images.shape[1]}x{images.shape[2]}: resize the shorter side and centre-crop first")


def florence_pixels(images: torch.Tensor, size: int, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (B,H,W,3) -> normalised (B,3,size,size) on `device`: the values Florence-2's image processor (its
    PIL path, the one the official code ran) gives the vision tower, bit for bit.

    Its steps and number types: PIL bicubic resize of the uint8 image (PIL rounds back to uint8), x * 1/255 in
    float64 then float32, then (x - mean) / std in float32. torch's own bicubic differs from PIL's by up to a few
    grey levels, so the resize goes through PIL, on the CPU. The arithmetic after it maps each of the 256 grey
    levels of a channel to one float32, so it is a table lookup (the same IEEE operations, done once per level
    instead of once per pixel: the training input stream's main cost before).
    """
    array = images.detach().to("cpu").numpy()
    if tuple(array.shape[1:3]) != (size, size):
        array = np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC)) for image in array])
    pixels = np.empty((array.shape[0], 3, size, size), dtype=np.float32)
    for channel in range(3):
        np.take(_FLORENCE_LEVELS[channel], array[..., channel], out=pixels[:, channel])
    return torch.from_numpy(pixels).to(device=device if device is not None else images.device, dtype=dtype)


def _florence_levels() -> np.ndarray:
    """(3, 256) float32: grey level -> the processor's normalised value, per channel."""
    levels = (np.arange(256, dtype=np.float64) * FLORENCE_RESCALE_FACTOR).astype(np.float32)
    mean = np.asarray(FLORENCE_IMAGE_MEAN, dtype=np.float32)[:, None]
    std = np.asarray(FLORENCE_IMAGE_STD, dtype=np.float32)[:, None]
    return ((levels[None, :] - mean) / std).astype(np.float32)


_FLORENCE_LEVELS = _florence_levels()


def vae_pixels(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B,H,W,3) -> (B,3,H,W) in [-1, 1], the range the SD VAE was trained on."""
    return (images.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0).to(dtype)


def pixels_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [-1, 1] -> uint8 (B,H,W,3), rounding to nearest."""
    scaled = ((pixels.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).contiguous()
