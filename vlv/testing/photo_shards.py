"""Webdataset shards of real photos in img2dataset's member layout, for benchmarks that need a download output.

Crops of the scikit-image photos (shipped with the package, nothing downloaded), resized to a square JPEG of the
paper's 384 px, written as `<shard>.tar` with `<key>.jpg`, `<key>.txt` and `<key>.json` members, keys numbered
the way img2dataset numbers them (shard number, then the row in the shard).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")


def write_photo_shards(folder: Path, count: int, per_shard: int, side: int = 384, seed: int = 0
                       ) -> list[tuple[str, str]]:
    """Write `count` photos into tars of `per_shard`; returns (shard file name, key) of every sample, in order."""
    import numpy as np
    import skimage.data
    from PIL import Image

    photos = [Image.open(Path(skimage.data.data_dir) / name).convert("RGB") for name in PHOTOS]
    rng = np.random.default_rng(seed)
    samples: list[tuple[str, str]] = []
    for shard in range((count + per_shard - 1) // per_shard):
        name = f"{shard:05d}.tar"
        with tarfile.open(folder / name, "w") as tar:
            for row in range(shard * per_shard, min(count, (shard + 1) * per_shard)):
                photo = photos[row % len(photos)]
                crop = int(rng.integers(min(photo.size) // 2, min(photo.size) + 1))
                left = int(rng.integers(0, photo.width - crop + 1))
                top = int(rng.integers(0, photo.height - crop + 1))
                image = photo.crop((left, top, left + crop, top + crop)).resize((side, side), Image.BICUBIC)
                encoded = io.BytesIO()
                image.save(encoded, format="JPEG", quality=95)
                key = f"{shard:05d}{row % per_shard:04d}"
                members = {"jpg": encoded.getvalue(), "txt": f"photo {row}".encode(),
                           "json": json.dumps({"url": f"http://example.invalid/{row}.jpg"}).encode()}
                for suffix, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{suffix}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                samples.append((name, key))
    return samples
