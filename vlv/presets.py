"""Presets are plain functions returning the root config; a variant calls its base and changes a few fields."""

from __future__ import annotations

from typing import Callable

from vlv.config import PipelineConfig
from vlv.steps.aesthetic_filter import AestheticFilterConfig
from vlv.steps.download import DownloadConfig
from vlv.steps.ingest_captions import IngestCaptionsConfig
from vlv.steps.prepare_metadata import PrepareMetadataConfig


def paper() -> PipelineConfig:
    """The paper's sizes and hyper-parameters (SPEC sections 2-3); data and weights come from your paths."""
    return PipelineConfig(
        preset="paper",
        prepare_metadata=PrepareMetadataConfig(source="laion"),
        download=DownloadConfig(image_size=384, processes_count=16, thread_count=64),
        aesthetic_filter=AestheticFilterConfig(model="pretrained", threshold=5.0, batch_size=256),
        ingest_captions=IngestCaptionsConfig(format="auto"),
    )


def tiny() -> PipelineConfig:
    """Offline, CPU, minutes: loopback photos, toy models with seeded random weights, generated captions."""
    return PipelineConfig(
        preset="tiny",
        prepare_metadata=PrepareMetadataConfig(source="tiny", min_side=256),
        download=DownloadConfig(image_size=64, samples_per_shard=8, processes_count=1, thread_count=4,
                                timeout_s=5, progress_interval_s=5.0),
        aesthetic_filter=AestheticFilterConfig(model="tiny-random", threshold=None, keep_top_quantile=0.75,
                                               batch_size=8),
        ingest_captions=IngestCaptionsConfig(generate_tiny=True),
    )


PRESETS: dict[str, Callable[[], PipelineConfig]] = {"tiny": tiny, "paper": paper}
