"""Synthetic training data and the tiny VLV stage tasks on it, built the way the training steps build them.

`write_shards` writes img2dataset-like shards with a `kept.parquet` and a `captions.parquet`. Stage 1 trains on the
kept images; stage 2 on the captions, starting from a stage-1 folder of the seeded (untrained) tiny encoder, with
the BPE tokenizer `train_stage2` trains on the captions. Used by the training tests and by
`benchmarks/bench_train_throughput.py`.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vlv.engine.step_output import output_of_folder
from vlv.models.config import CaptionerConfig, Stage1ModelConfig
from vlv.steps.train_stage2 import TrainStage2Config, prepare_tokenizer
from vlv.testing.builders import write_stage1_folder
from vlv.train.data import ImageStreamConfig, WebDatasetImageStream
from vlv.train.stage_tasks import Stage1Task, Stage2Task

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


IMAGE_SIZE = 64  # Stage1ModelConfig.tiny().image_size


def tiny_shards(root: Path) -> Path:
    """Write the synthetic shards into `root` once (reused when already there) and return the folder."""
    if not (root / "captions.parquet").is_file():
        root.mkdir(parents=True, exist_ok=True)
        write_shards(root, image_size=IMAGE_SIZE)
    return root


def _stream(shards: Path, samples: str, *, with_captions: bool = False) -> WebDatasetImageStream:
    return WebDatasetImageStream(shards_uri=str(shards), samples_uri=str(shards / samples),
                                 with_captions=with_captions,
                                 config=ImageStreamConfig(image_size=IMAGE_SIZE, shuffle_buffer=4, seed=0))


def tiny_stage1_task(root: Path) -> Stage1Task:
    return Stage1Task(stream=_stream(tiny_shards(root / "shards"), "kept.parquet"), model=Stage1ModelConfig.tiny())


def tiny_stage2_task(root: Path) -> Stage2Task:
    shards = tiny_shards(root / "shards")
    stage1_dir, tokenizer_dir = root / "stage1", root / "tokenizer"
    stage1_dir.mkdir(parents=True, exist_ok=True)
    write_stage1_folder(stage1_dir)
    model = CaptionerConfig.tiny()
    prepare_tokenizer(TrainStage2Config(model=model), output_of_folder("ingest_captions", "tiny", shards),
                      tokenizer_dir)
    return Stage2Task(model=model, stage1=output_of_folder("train_stage1", "tiny", stage1_dir),
                      tokenizer_uri=str(tokenizer_dir), stream=_stream(shards, "captions.parquet", with_captions=True))
