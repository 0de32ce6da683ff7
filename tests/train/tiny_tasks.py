"""The tiny VLV stage tasks on synthetic shards, built the way the training steps build them.

Stage 1 trains on `kept.parquet` of `shard_helpers.write_shards`; stage 2 on its `captions.parquet`, starting
from a stage-1 folder of the seeded (untrained) tiny encoder, with the BPE tokenizer `train_stage2` trains on
the captions. Used by the training tests and by `benchmarks/bench_train_throughput.py`.
"""

from __future__ import annotations

from pathlib import Path

from tests.train.shard_helpers import write_shards
from vlv.engine.step_output import output_of_folder
from vlv.models.config import CaptionerConfig, Stage1ModelConfig
from vlv.train.data import ImageStreamConfig, WebDatasetImageStream
from vlv.train.stage_tasks import Stage1Task, Stage2Task

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
    from tests.steps.eval_upstream import write_stage1_folder
    from vlv.steps.train_stage2 import TrainStage2Config, prepare_tokenizer

    shards = tiny_shards(root / "shards")
    stage1_dir, tokenizer_dir = root / "stage1", root / "tokenizer"
    stage1_dir.mkdir(parents=True, exist_ok=True)
    write_stage1_folder(stage1_dir)
    model = CaptionerConfig.tiny()
    prepare_tokenizer(TrainStage2Config(model=model), output_of_folder("ingest_captions", "tiny", shards),
                      tokenizer_dir)
    return Stage2Task(model=model, stage1=output_of_folder("train_stage1", "tiny", stage1_dir),
                      tokenizer_uri=str(tokenizer_dir), stream=_stream(shards, "captions.parquet", with_captions=True))
