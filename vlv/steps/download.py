"""Step `download`: img2dataset into webdataset shards, resumable, with counts by status and error reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlv.engine.step import Step, StepContext, StepResult


@dataclass
class DownloadConfig:
    image_size: int = 384  # shorter side resized to this, then centre-cropped (SPEC section 2)
    resize_mode: Literal["center_crop", "border", "keep_ratio", "no"] = "center_crop"
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = 95
    samples_per_shard: int = 10000
    processes_count: int = 2
    thread_count: int = 16
    timeout_s: int = 10
    retries: int = 0
    # "auto": img2dataset's `ray` distributor when joined to a Ray cluster, `multiprocessing` otherwise.
    distributor: Literal["auto", "multiprocessing", "ray"] = "auto"
    # Respect X-Robots-Tag opt-outs (img2dataset's default directives); set false only with the rights to.
    respect_opt_out: bool = True
    num_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ValueError(f"download.image_size must be > 0, got {self.image_size}")
        if self.samples_per_shard <= 0:
            raise ValueError(f"download.samples_per_shard must be > 0, got {self.samples_per_shard}")
        if self.processes_count <= 0 or self.thread_count <= 0:
            raise ValueError("download.processes_count and download.thread_count must be > 0")


class DownloadStep(Step[DownloadConfig]):
    name = "download"
    upstream = ("prepare_metadata",)
    code_version = "1"
    description = "img2dataset into webdataset shards"

    def run(self, ctx: StepContext[DownloadConfig]) -> StepResult:
        raise NotImplementedError("being written")  # DEV SCAFFOLD: replaced before commit
