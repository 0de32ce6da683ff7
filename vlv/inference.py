"""Captioning with a trained captioner folder: the Python API of `vlv caption`, which `vlv.serving` also uses.

The folder format and the loaders are `vlv.models.trained_folder` (docs/DESIGN.md section 4.7).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlv.models.image_files import image_as_array
from vlv.models.trained_folder import load_captioner, read_captioner_config


def caption_images(images: Sequence[Any], folder: str | Path, *, batch_size: int = 8, num_beams: int | None = None,
                   max_new_tokens: int | None = None, captioner: Any = None) -> list[str]:
    """Caption image files, encoded image bytes or uint8 arrays with a trained captioner folder (the Python API
    of `vlv caption`; `vlv.serving` passes the bytes of a request)."""
    import torch

    model = captioner if captioner is not None else load_captioner(folder)
    cfg = read_captioner_config(folder)
    size = model.embedder.image_size
    captions: list[str] = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.stack([image_as_array(item, size) for item in images[start:start + batch_size]]))
        with torch.no_grad():
            captions += model.generate(chunk, num_beams=num_beams or cfg.num_beams,
                                       max_new_tokens=max_new_tokens or cfg.max_new_tokens)
    return captions
