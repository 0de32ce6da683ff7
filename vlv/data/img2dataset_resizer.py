"""img2dataset's Resizer with two guards it lacks: pixel count read from the header, and 16-bit images.

- Decompression bombs: img2dataset checks `max_image_area` only after decoding, so a small PNG that declares
  100000 x 100000 pixels would be allocated first (OpenCV's own ceiling is 2^30 pixels, 3 GB a decode, per
  download thread). Here the size is read from the header (PIL, no pixel data) and the image refused before
  any decoder runs, with img2dataset's own reason "image area too large".
- 16-bit PNG/TIFF: OpenCV decodes them as uint16 and img2dataset encodes that to an 8-bit JPEG by saturating,
  which turns nearly every pixel white. They are scaled to 8 bits first (value >> 8), so the rest of the
  resizer (alpha matting, resize, encode) sees an ordinary 8-bit image.

`run_img2dataset` installs this class in place of img2dataset's Resizer for the duration of a download; the
instance is pickled into img2dataset's worker processes, so it lives in an importable module.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from img2dataset.resizer import Resizer
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
_FAILED = (None, None, None, None, None)


def declared_pixels(data: bytes) -> int | None:
    """Width x height from the image header (no pixel data decoded); None when PIL cannot read the header."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Image.DecompressionBombError as err:  # > 2 x PIL's limit: the size is in the message only
            return _pixels_from_message(str(err))
        except Exception:  # noqa: BLE001 - not readable by PIL: img2dataset's decoder gives the reason
            return None
    return width * height


def _pixels_from_message(message: str) -> int | None:
    digits = message.split("(", 1)[-1].split(" ", 1)[0]
    return int(digits) if digits.isdigit() else None


def to_8bit(data: bytes) -> bytes | None:
    """An 8-bit PNG of a 16-bit PNG/TIFF (None for everything else: passed on unchanged)."""
    is_png16 = data.startswith(PNG_SIGNATURE) and len(data) > 24 and data[24] == 16
    if not is_png16 and not data.startswith(TIFF_SIGNATURES):
        return None
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if image is None or image.dtype == np.uint8:
        return None
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    else:  # float TIFF: values in [0, 1]
        image = np.rint(np.clip(image.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", image)
    return encoded.tobytes() if ok else None


class GuardedResizer(Resizer):
    """img2dataset's Resizer, after the pixel-count check and the 16-bit conversion of this module."""

    def __call__(self, img_stream, blurring_bbox_list=None):
        img_stream.seek(0)
        data = img_stream.read()
        pixels = declared_pixels(data)
        if pixels is not None and pixels > self.max_image_area:
            return (*_FAILED, "image area too large")
        eight_bit = to_8bit(data)
        return super().__call__(io.BytesIO(eight_bit if eight_bit is not None else data), blurring_bbox_list)
