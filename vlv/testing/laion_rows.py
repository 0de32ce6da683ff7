"""Synthetic LAION metadata at scale, for the prepare_metadata benchmark and tests: real column names and types,
realistic value distributions, duplicate URLs within and across files, a few broken rows.

Deterministic in (seed, total rows, file count): file i is generated from its own seeded generator, and a
cached folder is reused when its stamp matches. Built column by column with numpy and Arrow compute (no per-row
Python): a few hundred thousand rows per CPU second.

What is modelled:
- sizes: the shorter side log-normal around 360 px, so most images are small (about a quarter pass `> 512`),
  aspect ratios log-normal around 1.2 with long tails (portraits, panoramas), 0.1% missing or zero widths;
- pwatermark u**3.2 and punsafe u**6 for uniform u (most near 0, long tails: about 19% and 11% at >= 0.5),
  a few nulls;
- URLs: 15% of rows draw from a pool of popular images shared by all files (skewed toward a few), so duplicates
  fall both within one file and across files (about 10% of rows); the same URL always shows the same image (size,
  watermark, safety) while its caption and LAION hash differ per row; 0.3% are not http(s) or null;
- `hash` is unique per row, so a kept row can be told apart from its duplicates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

LAION_SCHEMA = pa.schema([
    ("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.int64()), ("HEIGHT", pa.int64()),
    ("similarity", pa.float64()), ("hash", pa.int64()), ("punsafe", pa.float32()), ("pwatermark", pa.float32()),
    ("aesthetic", pa.float64()),
])
_HOSTS = ("i.pinimg.com", "cdn.shopify.com", "images-na.ssl-images-amazon.com", "i.ebayimg.com",
          "media.gettyimages.com", "upload.wikimedia.org", "i.etsystatic.com", "live.staticflickr.com",
          "img.alicdn.com", "s3.amazonaws.com", "cdn.pixabay.com", "images.unsplash.com", "ae01.alicdn.com",
          "i.ytimg.com", "static.wixstatic.com", "www.dhresource.com", "cdn.webshopapp.com", "i0.wp.com")
_SCHEMES = ("https://", "http://", "HTTPS://")
_BROKEN = ("ftp://files.example.net/", "data:image/png;base64,", "//cdn.example.com/", "")
_WORDS = ("a", "the", "red", "blue", "vintage", "modern", "wooden", "dog", "cat", "house", "garden", "dress",
          "wedding", "mountain", "lake", "sunset", "portrait", "kitchen", "chair", "table", "ring", "gold",
          "silver", "car", "bike", "city", "street", "beach", "flower", "poster", "print", "art", "photo",
          "women's", "men's", "kids", "summer", "winter", "christmas", "logo", "design", "white", "black")
_POPULAR_FRACTION = 0.15  # rows whose URL comes from the shared pool of popular images
_POPULAR_POOL_PER_ROW = 0.05  # pool size as a fraction of all rows: a popular URL appears about 3 times
_ROW_GROUP_ROWS = 131_072


@dataclass(frozen=True)
class SyntheticLaion:
    """Where a synthetic set lives and its shape; `files` are in order (the order de-duplication goes by)."""

    folder: Path
    rows: int
    files: tuple[Path, ...]


def file_row_counts(rows: int, num_files: int) -> list[int]:
    base, extra = divmod(rows, num_files)
    return [base + (1 if i < extra else 0) for i in range(num_files)]


def write_synthetic_laion(folder: Path, rows: int, num_files: int, seed: int = 0) -> SyntheticLaion:
    """Generate (or reuse, when `folder`'s stamp says the same rows, files and seed) the synthetic set."""
    if rows < num_files or num_files < 1:
        raise ValueError(f"need at least one row per file and one file, got rows={rows}, files={num_files}")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = {"rows": rows, "files": num_files, "seed": seed, "version": 1}
    stamp_path = folder / "synthetic_laion.json"
    files = tuple(folder / f"part-{i:05d}.parquet" for i in range(num_files))
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp and all(f.is_file() for f in files):
        return SyntheticLaion(folder, rows, files)
    stamp_path.unlink(missing_ok=True)
    for stale in folder.glob("part-*.parquet"):
        stale.unlink()
    pool_size = max(1, int(rows * _POPULAR_POOL_PER_ROW))
    offset = 0
    for index, (path, count) in enumerate(zip(files, file_row_counts(rows, num_files))):
        table = synthetic_laion_table(count, first_row=offset, pool_size=pool_size, seed=seed * 1_000_003 + index)
        pq.write_table(table, path, row_group_size=_ROW_GROUP_ROWS)
        offset += count
    stamp_path.write_text(json.dumps(stamp))
    return SyntheticLaion(folder, rows, files)


def synthetic_laion_table(rows: int, *, first_row: int, pool_size: int, seed: int) -> pa.Table:
    """`rows` LAION rows; image ids below `pool_size` are the popular ones shared by every file."""
    rng = np.random.default_rng(seed)
    popular = rng.random(rows) < _POPULAR_FRACTION
    # Popular images: a skewed draw from the shared pool; the rest: ids of their own, past the pool.
    image_id = np.where(popular, (pool_size * rng.random(rows) ** 2).astype(np.int64),
                        pool_size + first_row + np.arange(rows, dtype=np.int64))
    image_rng = _image_features(image_id)
    url = _urls(image_id, rng)
    shorter = image_rng["shorter"]
    aspect = image_rng["aspect"]
    wide = aspect >= 1
    width = np.where(wide, shorter * aspect, shorter).round().astype(np.int64)
    height = np.where(wide, shorter, shorter / aspect).round().astype(np.int64)
    broken_size = rng.random(rows) < 0.001
    width_arr = pa.array(np.where(broken_size & (rng.random(rows) < 0.5), 0, width),
                         mask=broken_size & (rng.random(rows) < 0.5))
    null_prob = rng.random(rows) < 0.0005
    return pa.table({
        "URL": url,
        "TEXT": _captions(rows, rng),
        "WIDTH": width_arr,
        "HEIGHT": pa.array(height),
        "similarity": pa.array(rng.normal(0.31, 0.035, rows)),
        "hash": pa.array(rng.integers(-(2**63), 2**63 - 1, rows, dtype=np.int64)),
        "punsafe": pa.array(image_rng["punsafe"].astype(np.float32), mask=null_prob),
        "pwatermark": pa.array(image_rng["pwatermark"].astype(np.float32), mask=np.roll(null_prob, 1)),
        "aesthetic": pa.array(rng.normal(5.2, 0.6, rows)),
    }, schema=LAION_SCHEMA)


def _image_features(image_id: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image values that depend on the image id only, so every copy of a URL shows the same image."""
    mixed = (image_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64(0xD1B54A32D192ED03)
    uniform = [((mixed * np.uint64(k * 2 + 1)) >> np.uint64(11)).astype(np.float64) / 2.0**53 for k in range(4)]
    u = [np.clip(x, 1e-12, 1 - 1e-12) for x in uniform]
    normal = np.sqrt(-2 * np.log(u[0])) * np.cos(2 * np.pi * u[1])
    normal2 = np.sqrt(-2 * np.log(u[0])) * np.sin(2 * np.pi * u[1])
    # Beta-like skews by inverse-transform of power laws: most mass near 0, long tails toward 1.
    return {"shorter": np.exp(np.log(360) + 0.55 * normal),
            "aspect": np.exp(np.log(1.2) + 0.35 * normal2),
            "pwatermark": u[2] ** 3.2,
            "punsafe": u[3] ** 6.0}


def _urls(image_id: np.ndarray, rng: np.random.Generator) -> pa.Array:
    rows = len(image_id)
    hosts = pa.array(_HOSTS).take(pa.array(image_id % len(_HOSTS)))
    schemes = pa.array(_SCHEMES).take(pa.array((image_id // 7 % 20 == 0).astype(np.int64)
                                               + (image_id // 11 % 97 == 0).astype(np.int64)))
    folders = pc.cast(pa.array(image_id // 1000 % 9973), pa.string())
    names = pc.cast(pa.array(image_id * 7919 % 10**12), pa.string())
    url = pc.binary_join_element_wise(schemes, hosts, pa.scalar("/images/"), folders, pa.scalar("/"), names,
                                      pa.scalar(".jpg"), "")
    broken = rng.random(rows) < 0.003
    if broken.any():
        which = rng.integers(0, len(_BROKEN) + 1, int(broken.sum()))
        prefixes = pa.array([(_BROKEN[w] if w < len(_BROKEN) else None) for w in which], pa.string())
        bad = pc.binary_join_element_wise(prefixes, names.filter(pa.array(broken)), "")
        url = pc.replace_with_mask(url, pa.array(broken), bad)
    return url


def _captions(rows: int, rng: np.random.Generator) -> pa.Array:
    words = pa.array(_WORDS)
    parts = [words.take(pa.array(rng.integers(0, len(_WORDS), rows))) for _ in range(6)]
    number = pc.cast(pa.array(rng.integers(0, 100_000, rows)), pa.string())
    text = pc.binary_join_element_wise(*parts, number, " ")
    return pc.if_else(pa.array(rng.random(rows) < 0.002), pa.scalar(None, pa.string()), text)
