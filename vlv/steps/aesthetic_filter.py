"""Step `aesthetic_filter`: CLIP image embeddings + LAION aesthetic predictor, as a Ray Data actor pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlv.engine.step import Step, StepContext, StepResult


@dataclass
class AestheticFilterConfig:
    # "pretrained": open_clip `clip_model` with `clip_pretrained` (a tag like "openai", or a local .bin/.pt path)
    # and the predictor weights from `predictor_weights`. "tiny-random": a small seeded random CLIP and predictor
    # of the same structure: scores mean nothing, the code path is the real one.
    model: Literal["pretrained", "tiny-random"] = "pretrained"
    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    predictor: Literal["v2-mlp", "v1-linear"] = "v2-mlp"
    predictor_weights: str = ""  # e.g. /models/sac+logos+ava1-l14-linearMSE.pth
    threshold: float | None = 5.0  # keep score >= threshold ...
    keep_top_quantile: float | None = None  # ... or keep the top fraction (e.g. 0.5), not both
    batch_size: int = 64
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.threshold is None) == (self.keep_top_quantile is None):
            raise ValueError("aesthetic_filter: set exactly one of threshold (e.g. 5.0) and keep_top_quantile "
                             "(e.g. 0.5); set the other to null")
        if self.keep_top_quantile is not None and not 0 < self.keep_top_quantile <= 1:
            raise ValueError(f"aesthetic_filter.keep_top_quantile must be in (0, 1], got {self.keep_top_quantile}")
        if self.batch_size <= 0 or self.num_actors <= 0:
            raise ValueError("aesthetic_filter.batch_size and aesthetic_filter.num_actors must be > 0")


class AestheticFilterStep(Step[AestheticFilterConfig]):
    name = "aesthetic_filter"
    upstream = ("download",)
    code_version = "1"
    description = "Score images with CLIP + LAION aesthetic MLP, keep the best"

    def run(self, ctx: StepContext[AestheticFilterConfig]) -> StepResult:
        raise NotImplementedError("being written")  # DEV SCAFFOLD: replaced before commit
