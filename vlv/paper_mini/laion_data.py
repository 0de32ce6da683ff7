"""The paper_mini training data: LAION-format metadata for real photos on a loopback site, and their Gemini captions.

- `data/laion_site/`: scikit-image's photographs and seeded crops/flips/recolourings of them, at 800 px on the
  longer side (so the shorter side, >= 533 px, passes the paper's > 512 px filter), plus the broken files every run
  should meet (a truncated JPEG, an HTML page, an opted-out photo); the download step serves this folder on
  127.0.0.1 (`prepare_metadata.serve_folder`).
- `data/laion/part-00000.parquet`: LAION's columns (URL, TEXT, WIDTH, HEIGHT, similarity, hash, punsafe,
  pwatermark, aesthetic) for those photos, rows that 404, and rows the paper's pre-filter drops (too small, a
  panorama, a watermark, a repeated URL).
- `data/gemini/predictions.jsonl`: a Gemini Batch API output file for the photos, keyed as img2dataset will key
  them (`img2dataset.downloader.compute_key` over the rows `prepare_laion_metadata` keeps, in order), with one faulty
  line of each kind ingestion must quarantine.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from vlv.data.caption_synthetic import write_tiny_gemini_output
from vlv.data.laion import MetadataFilter
from vlv.data.laion_prepare import prepare_laion_metadata
from vlv.data.loopback_site import TinySiteSpec, build_loopback_site
from vlv.models.image_files import decode_image
from vlv.paper_mini.layout import PaperMiniAssets

PHOTO_SIDE = 800
IMG2DATASET_SHARD_DIGITS = 5  # img2dataset's default oom_shard_count, which the download step keeps


@dataclass(frozen=True)
class LaionData:
    metadata_rows: int
    good_photos: int
    photos: list[np.ndarray]  # the good photos as the training stream will see them (uint8, 384 x 384)
    caption_lines: int


def img2dataset_key(row: int, samples_per_shard: int) -> str:
    """The key img2dataset gives the `row`-th input row (0-based) with shards of `samples_per_shard`."""
    from img2dataset.downloader import compute_key

    return compute_key(row % samples_per_shard, row // samples_per_shard,
                       math.ceil(math.log10(samples_per_shard)), IMG2DATASET_SHARD_DIGITS)


def write_laion_data(assets: PaperMiniAssets, *, num_photos: int, rule: MetadataFilter, samples_per_shard: int,
                     image_size: int, seed: int) -> LaionData:
    spec = TinySiteSpec(num_images=num_photos, image_side=PHOTO_SIDE, seed=seed)
    site = build_loopback_site(assets.site, spec, rule)
    assets.laion_metadata.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(site.rows, assets.laion_metadata)
    with tempfile.TemporaryDirectory(prefix="vlv-paper-mini-") as scratch:
        kept_path = str(Path(scratch) / "metadata.parquet")
        prepare_laion_metadata(str(assets.laion_metadata), kept_path, rule)  # as the prepare_metadata step does
        kept_urls = pq.read_table(kept_path, columns=["URL"]).column("URL").to_pylist()
    keys = {url: img2dataset_key(row, samples_per_shard) for row, url in enumerate(kept_urls)}
    missing = [url for url in site.good_urls if url not in keys]
    if missing:
        raise RuntimeError(f"the paper filter drops photos the site meant to keep: {missing[:3]}")
    texts = dict(zip(site.rows.column("URL").to_pylist(), site.rows.column("TEXT").to_pylist()))
    good = sorted(site.good_urls, key=kept_urls.index)
    assets.gemini_output.parent.mkdir(parents=True, exist_ok=True)
    captions = write_tiny_gemini_output(str(assets.gemini_output), [keys[url] for url in good],
                                        [texts[url] for url in good], seed=seed)
    photos = [decode_image(_read_photo(assets.site, url), image_size, url) for url in good]
    return LaionData(metadata_rows=site.rows.num_rows, good_photos=len(good), photos=photos,
                     caption_lines=captions.good_lines + sum(captions.faulty.values()))


def _read_photo(site_folder: Path, url: str) -> bytes:
    return (site_folder / url.split("/", 3)[3]).read_bytes()  # http://host:port/<relative>
