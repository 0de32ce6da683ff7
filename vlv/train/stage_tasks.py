"""TrainTasks that plug the VLV models into the training loop (see `vlv.train.loop.TrainTask`).

A task is a small picklable value (configs and paths) that each Ray Train worker turns into a model, a batch
stream and a loss; the loop owns everything else (DeepSpeed, checkpoints, metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from vlv.engine.step_output import StepOutput
from vlv.engine.storage import fetch_to_cache
from vlv.models.caption_tokenizer import load_caption_tokenizer, tokenize_captions
from vlv.models.config import CaptionerConfig, Stage1ModelConfig
from vlv.models.trained_folder import load_caption_embedder
from vlv.train.data import ImageBatch, WebDatasetImageStream

if TYPE_CHECKING:  # the model modules (torch, transformers) are imported where used: only training workers need them
    import torch
    from transformers import PreTrainedTokenizerBase

    from vlv.models.captioner import CaptionBatch, VLVCaptioner
    from vlv.models.vlv_stage1 import VLVStage1


@dataclass(frozen=True)
class Stage1Task:
    """Stage 1: uint8 images from the kept samples -> MSE(eps, eps_theta) of the frozen SD UNet."""

    stream: WebDatasetImageStream  # samples_uri = aesthetic_filter's kept.parquet
    model: Stage1ModelConfig

    def __post_init__(self) -> None:
        if self.stream.config.image_size != self.model.image_size:
            raise ValueError(f"the data stream gives {self.stream.config.image_size} px images but the stage-1 "
                             f"model expects image_size={self.model.image_size}; set both to the same value")

    def build_model(self) -> VLVStage1:
        from vlv.models.vlv_stage1 import build_stage1_model

        return build_stage1_model(self.model)

    def batches(self, *, rank: int, world_size: int, batch_size: int, start_batch: int) -> Iterator[ImageBatch]:
        return self.stream.batches(rank=rank, world_size=world_size, batch_size=batch_size, start_batch=start_batch)

    def loss(self, model: VLVStage1, batch: ImageBatch, generator: torch.Generator) -> torch.Tensor:
        from vlv.models.vlv_stage1 import Stage1Batch

        device = next(model.parameters()).device
        return model(Stage1Batch(images=batch.images.to(device)), generator=generator)


@dataclass(frozen=True)
class Stage2Task:
    """The stage-2 workload for the generic loop; holds folder paths, builds everything on the worker."""

    model: CaptionerConfig
    stage1: StepOutput  # train_stage1's published output: each worker fetches it where it runs
    tokenizer_uri: str  # the LLM tokenizer folder, in the store (or a local path on one machine)
    stream: WebDatasetImageStream  # over captions.parquet, with captions

    def build_model(self) -> VLVCaptioner:
        from vlv.models.captioner import build_captioner

        embedder = load_caption_embedder(self.stage1.local_folder())
        return build_captioner(self.model, embedder, self.tokenizer()).train()

    def tokenizer(self) -> PreTrainedTokenizerBase:
        return load_caption_tokenizer(self.model, str(fetch_to_cache(self.tokenizer_uri)))

    def batches(self, *, rank: int, world_size: int, batch_size: int, start_batch: int) -> Iterator[CaptionBatch]:
        from vlv.models.captioner import CaptionBatch

        tokenizer = self.tokenizer()
        for batch in self.stream.batches(rank=rank, world_size=world_size, batch_size=batch_size,
                                         start_batch=start_batch):
            tokens = tokenize_captions(tokenizer, batch.captions, self.model.max_caption_tokens)
            yield CaptionBatch(images=batch.images, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)

    def loss(self, model: VLVCaptioner, batch: CaptionBatch, generator: torch.Generator) -> torch.Tensor:
        return model(batch)
