"""Step `train_stage2`: train the captioner (stage-1 encoder -> MLP -> Qwen2) on images + ingested captions.

Data: the images of `captions.parquet` (ingest_captions, already joined to the kept images) streamed from the
`download` shards, each with its caption. The encoder starts from `train_stage1`'s output. For the `tiny` preset
the LLM tokenizer is a byte-level BPE trained here on the ingested captions and saved with the model. The
published output is a self-contained captioner folder (`vlv caption --checkpoint <it>`), plus a table of
generated captions beside the reference captions.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlv.engine.step import StepContext, StepOutput, StepResult
from vlv.engine.storage import filesystem
from vlv.models.config import CaptionerConfig
from vlv.models.trained_folder import (
    CAPTIONER_WEIGHTS,
    TOKENIZER_DIR,
    load_captioner,
    read_stage1_config,
    save_captioner_checkpoint,
)
from vlv.steps.download import SHARDS
from vlv.steps.ingest_captions import CAPTIONS
from vlv.steps.training_common import TrainingStep, training_metrics
from vlv.train.data import ImageStreamConfig, WebDatasetImageStream
from vlv.train.deepspeed_config import DeepSpeedConfig, stage2_paper
from vlv.train.loop import EXPORT_FILE, LoopConfig
from vlv.train.ray_trainer import RayTrainConfig
from vlv.train.stage_tasks import Stage2Task


@dataclass
class TrainStage2Config:
    model: CaptionerConfig = field(default_factory=CaptionerConfig.paper)
    # Linear decay over the official script's horizon (781,250 steps: about 1e-5 throughout a 100K-step run).
    # Decay to 0 over the run instead: --set train_stage2.deepspeed.schedule.total_steps=null
    deepspeed: DeepSpeedConfig = field(default_factory=stage2_paper)
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(total_steps=100_000, checkpoint_every=2_000))
    ray_train: RayTrainConfig = field(default_factory=lambda: RayTrainConfig(num_workers=8, use_gpu=True))
    shuffle_buffer: int = 256
    sample_captions: int = 8  # generated vs reference captions logged as a table
    tokenizer_max_captions: int = 200_000  # captions the tiny BPE is trained on (random init only)

    def __post_init__(self) -> None:
        if self.sample_captions < 0 or self.tokenizer_max_captions <= 0:
            raise ValueError("train_stage2.sample_captions must be >= 0 and tokenizer_max_captions > 0")
        if self.shuffle_buffer < 0:
            raise ValueError(f"train_stage2.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")


class TrainStage2Step(TrainingStep[TrainStage2Config]):
    name = "train_stage2"
    upstream = ("download", "ingest_captions", "train_stage1")
    code_version = "2"  # 2: "encoder" in the trainable set is Florence's language model only
    description = "Train the captioner: stage-1 encoder -> MLP -> Qwen2 on Gemini captions (DeepSpeed on Ray Train)"
    registered_model = "vlv-captioner"

    def run(self, ctx: StepContext[TrainStage2Config]) -> StepResult:
        cfg = ctx.config
        stage1 = ctx.input("train_stage1")
        stage1_dir = stage1.local_folder()  # small: config + trainable tensors, fetched once on this node
        captions = ctx.input("ingest_captions")
        tokenizer_dir = ctx.output_dir / TOKENIZER_DIR
        tokenizer = prepare_tokenizer(cfg, captions, tokenizer_dir)
        tokenizer_uri = share_folder(tokenizer_dir, f"{ctx.scratch_uri}/tokenizer")
        ctx.log.debug("LLM tokenizer: %d ids (shared with the workers at %s)", len(tokenizer), tokenizer_uri)
        stream = WebDatasetImageStream(
            shards_uri=ctx.input("download").path(SHARDS), samples_uri=captions.path(CAPTIONS), with_captions=True,
            config=ImageStreamConfig(image_size=read_stage1_config(stage1_dir).image_size,
                                     shuffle_buffer=cfg.shuffle_buffer, seed=cfg.loop.seed),
        )
        outcome = self.train(ctx, Stage2Task(model=cfg.model, stage1=stage1, tokenizer_uri=tokenizer_uri,
                                             stream=stream))
        (ctx.output_dir / EXPORT_FILE).rename(ctx.output_dir / CAPTIONER_WEIGHTS)
        save_captioner_checkpoint(ctx.output_dir, stage1_dir, cfg.model, ctx.output_dir / CAPTIONER_WEIGHTS,
                                  tokenizer)
        artifacts = []
        if cfg.sample_captions:
            write_caption_samples(load_captioner(ctx.output_dir), stream, cfg, ctx.output_dir / "caption_samples.csv")
            artifacts.append("caption_samples.csv")
        return StepResult(metrics=training_metrics(outcome), artifacts=artifacts)


def prepare_tokenizer(cfg: TrainStage2Config, captions: StepOutput, out_dir: Path) -> Any:
    """Pretrained: the Qwen tokenizer. Random (tiny): a BPE trained on the ingested captions, saved to out_dir."""
    from vlv.models.captioner import build_caption_tokenizer

    if cfg.model.init == "pretrained":
        tokenizer = build_caption_tokenizer(cfg.model)
        tokenizer.save_pretrained(str(out_dir))
        return tokenizer
    texts: list[str] = []
    with captions.parquet_file(CAPTIONS) as parquet:
        for batch in parquet.iter_batches(columns=["caption"], batch_size=10_000):
            texts.extend(str(c) for c in batch.column(0).to_pylist())
            if len(texts) >= cfg.tokenizer_max_captions:
                break
    if not texts:
        raise ValueError(f"{captions.path(CAPTIONS)} holds no captions to train the tokenizer on; check "
                         f"ingest_captions")
    return build_caption_tokenizer(cfg.model, texts[:cfg.tokenizer_max_captions], out_dir)


def share_folder(folder: Path, base_uri: str) -> str:
    """Copy a small local folder into the store under a name derived from its content; returns its URI.

    Ray Train workers on other nodes fetch it from there (`fetch_to_cache`); the content hash in the name keeps
    a node's cached copy from ever standing for different files.
    """
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    uri = f"{base_uri}-{digest.hexdigest()[:16]}"
    fs, root = filesystem(uri)
    for path in files:
        target = f"{root}/{path.relative_to(folder).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(path), target)
    return uri


def write_caption_samples(captioner: Any, stream: Any, cfg: TrainStage2Config, path: Path) -> None:
    batch = next(stream.batches(rank=0, world_size=1, batch_size=cfg.sample_captions, start_batch=0))
    generated = captioner.generate(batch.images, num_beams=cfg.model.num_beams,
                                   max_new_tokens=cfg.model.max_new_tokens)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "generated", "reference"])
        for key, text, reference in zip(batch.keys, generated, batch.captions):
            writer.writerow([key, text, reference])



