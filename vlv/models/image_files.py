"""Image files, encoded bytes and arrays -> the uint8 (size, size, 3) arrays the models take: the shorter side
resized to `size` (bicubic), then centre-cropped, the same for training batches, inference and evaluation.

Torch-free (numpy and PIL only), so the data streams of the training package and the config layer can import it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from vlv.engine.storage import is_remote, read_bytes


def image_as_array(item: str | Path | bytes | bytearray | np.ndarray, size: int) -> np.ndarray:
    """A file path, encoded image bytes or an image array -> uint8 (size, size, 3): shorter side resized,
    centre-cropped (as training)."""
    if isinstance(item, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(item)) as probe:
                probe.load()
        except (OSError, ValueError) as err:
            raise ValueError(f"the image bytes given are not a decodable image ({err})") from None
        return decode_image(bytes(item), size, "image bytes")
    if isinstance(item, (str, Path)):
        if is_remote(str(item)):  # an image in the store (e.g. the tiny eval sets), read on any node
            return decode_image(read_bytes(str(item)), size, str(item))
        path = Path(item)
        if not path.is_file():
            raise ValueError(f"image file {path} does not exist")
        return decode_image(path.read_bytes(), size, str(path))
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(item, dtype=np.uint8)).save(buffer, format="PNG")
    return decode_image(buffer.getvalue(), size, "array")


def decode_image(raw: bytes, image_size: int, key: str) -> np.ndarray:
    """Encoded image -> uint8 (size, size, 3): shorter side resized to `size` (bicubic), centre-cropped."""
    try:
        with Image.open(io.BytesIO(raw)) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"sample {key}: the image cannot be decoded ({err}); aesthetic_filter lists only "
                         f"decodable images, so the shards changed after it ran") from None
    width, height = image.size
    if (width, height) != (image_size, image_size):
        scale = image_size / min(width, height)
        resized = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
        image = image.resize(resized, Image.Resampling.BICUBIC)
        left, top = (resized[0] - image_size) // 2, (resized[1] - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
    return np.asarray(image, dtype=np.uint8)
