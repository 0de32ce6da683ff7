"""Synthetic img2dataset-like shards, kept.parquet and captions.parquet for the training data tests."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SHARD_SIZES = (5, 3, 6, 4, 2)  # images per tar, deliberately uneven


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg(value: int, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, (value * 7) % 256)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_shards(root: Path, *, image_size: int = 32, shard_sizes: tuple[int, ...] = SHARD_SIZES) -> dict:
    """<key>.jpg/.txt/.json per sample; every 4th key left out of kept.parquet and captions.parquet.

    Shard 1 holds non-square images (1.5 x wider), to exercise resize + centre crop.
    """
    kept_rows, caption_rows, all_keys = [], [], []
    counter = 0
    for shard_index, size in enumerate(shard_sizes):
        shard = f"{shard_index:05d}.tar"
        with tarfile.open(root / shard, "w") as tar:
            for _ in range(size):
                key = f"{counter:09d}"
                dims = (image_size * 3 // 2, image_size) if shard_index == 1 else (image_size, image_size)
                _add(tar, f"{key}.jpg", _jpeg(counter * 9 % 256, dims))
                _add(tar, f"{key}.txt", f"alt text {key}".encode())
                _add(tar, f"{key}.json", json.dumps({"key": key}).encode())
                all_keys.append(key)
                if counter % 4 != 3:
                    kept_rows.append({"key": key, "shard": shard, "url": f"http://x/{key}", "caption": "alt",
                                      "score": 5.0})
                    caption_rows.append({"key": key, "caption": f"a detailed caption of {key}", "shard": shard})
                counter += 1
        (root / f"{shard_index:05d}_stats.json").write_text("{}")
    pq.write_table(pa.Table.from_pylist(kept_rows), root / "kept.parquet")
    pq.write_table(pa.Table.from_pylist(caption_rows), root / "captions.parquet")
    return {"dir": root, "kept": {r["key"] for r in kept_rows}, "all": all_keys}
