"""Step `prepare_metadata`: LAION metadata parquet -> filtered, de-duplicated metadata for img2dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlv.engine.step import Step, StepContext, StepResult


@dataclass
class PrepareMetadataConfig:
    # "laion": read LAION parquet from `input_uri`; "tiny": build a LAION-format set of real photos served on
    # loopback HTTP (scikit-image samples and variations, plus broken rows so failure paths always run).
    source: Literal["laion", "tiny"] = "laion"
    input_uri: str = ""  # path, glob or URI (s3://, gs://) of LAION metadata parquet files
    # Our column name -> the name in your LAION release, for columns whose names differ (e.g. {"URL": "url"}).
    column_map: dict[str, str] = field(default_factory=dict)
    min_side: int = 512  # keep rows whose shorter side is > min_side (paper)
    min_aspect: float = 0.5  # keep WIDTH / HEIGHT in [min_aspect, max_aspect] (paper)
    max_aspect: float = 2.0
    max_pwatermark: float = 0.5  # keep pwatermark < max_pwatermark (paper)
    max_punsafe: float | None = None  # keep punsafe < max_punsafe when set
    tiny_num_images: int = 24  # tiny source: number of good photos (plus the broken rows)
    tiny_image_side: int = 640  # tiny source: longer side of the served photos
    tiny_port: int = 18765  # tiny source: loopback HTTP port the photos are served on
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.min_aspect <= self.max_aspect:
            raise ValueError(f"prepare_metadata.min_aspect/max_aspect must satisfy 0 < min <= max, "
                             f"got {self.min_aspect}, {self.max_aspect}")
        if self.min_side < 0:
            raise ValueError(f"prepare_metadata.min_side must be >= 0, got {self.min_side}")
        if not 1 <= self.tiny_port <= 65535:
            raise ValueError(f"prepare_metadata.tiny_port must be in 1..65535, got {self.tiny_port}")


class PrepareMetadataStep(Step[PrepareMetadataConfig]):
    name = "prepare_metadata"
    upstream = ()
    code_version = "1"
    description = "Filter LAION metadata (or build the tiny loopback set) for img2dataset"

    def run(self, ctx: StepContext[PrepareMetadataConfig]) -> StepResult:
        raise NotImplementedError("being written")  # DEV SCAFFOLD: replaced before commit
