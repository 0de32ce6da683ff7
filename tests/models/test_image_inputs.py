"""Florence-2's pixel view equals its image processor's output on a real photo (built offline from its config)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlv.models.image_inputs import FLORENCE_IMAGE_MEAN, FLORENCE_IMAGE_STD, florence_pixels

# preprocessor_config.json of the Florence-2 checkpoints (microsoft/Florence-2-large, and the transformers-native
# florence-community/Florence-2-large keeps the same values).
FLORENCE_PREPROCESSOR = {
    "do_resize": True, "size": {"height": 768, "width": 768}, "resample": 3, "do_center_crop": False,
    "crop_size": {"height": 768, "width": 768}, "do_rescale": True, "rescale_factor": 0.00392156862745098,
    "do_normalize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
    "do_convert_rgb": None,
}


def _processor(size: int):
    """transformers' Florence-2 image processor (CLIPImageProcessor), PIL backend: the path the official code ran
    (transformers 4.51's CLIPImageProcessor resized with PIL)."""
    from transformers import CLIPImageProcessorPil

    square = {"height": size, "width": size}
    return CLIPImageProcessorPil(**dict(FLORENCE_PREPROCESSOR, size=square, crop_size=square))


def _photos(side: int) -> torch.Tensor:
    """scikit-image's astronaut and coffee photos, resized (PIL, as the download does) to side x side."""
    from skimage import data

    photos = [Image.fromarray(data.astronaut()), Image.fromarray(data.coffee()).crop((100, 0, 500, 400))]
    return torch.from_numpy(np.stack([np.asarray(p.resize((side, side), Image.LANCZOS)) for p in photos]))


@pytest.mark.parametrize("side, size", [(384, 768), (512, 768), (64, 64)])
def test_florence_pixels_equal_the_florence_image_processor(side, size):
    images = _photos(side)
    expected = _processor(size)(images=list(images.numpy()), return_tensors="pt")["pixel_values"]
    ours = florence_pixels(images, size)
    assert ours.shape == expected.shape == (2, 3, size, size) and ours.dtype == expected.dtype == torch.float32
    assert torch.equal(ours, expected)


def test_torch_bicubic_would_not_match_the_processor():
    """Why the resize goes through PIL: torch's antialiased bicubic is off by up to a few grey levels."""
    images = _photos(384)
    expected = _processor(768)(images=list(images.numpy()), return_tensors="pt")["pixel_values"]
    resized = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(768, 768), mode="bicubic", antialias=True)
    mean, std = torch.tensor(FLORENCE_IMAGE_MEAN).view(1, 3, 1, 1), torch.tensor(FLORENCE_IMAGE_STD).view(1, 3, 1, 1)
    torch_view = (resized.clamp(0, 255) / 255.0 - mean) / std
    assert (torch_view - expected).abs().max() > 0.01


def test_florence_pixels_land_on_the_requested_device_and_dtype():
    images = _photos(64)
    pixels = florence_pixels(images, 64, dtype=torch.bfloat16, device="cpu")
    assert pixels.dtype == torch.bfloat16 and pixels.device.type == "cpu"
    assert torch.equal(pixels, florence_pixels(images, 64).to(torch.bfloat16))
