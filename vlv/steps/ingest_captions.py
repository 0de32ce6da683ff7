"""Step `ingest_captions`: Gemini/Vertex batch output or plain caption files -> caption table + quarantine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlv.engine.step import Step, StepContext, StepResult


@dataclass
class IngestCaptionsConfig:
    # Path, glob or URI of caption files. Empty with generate_tiny=true: the step writes a Gemini-format file
    # for its kept images (with faulty lines) and ingests that.
    source: str = ""
    generate_tiny: bool = False
    format: Literal["auto", "gemini_batch", "vertex_batch", "jsonl", "csv", "parquet"] = "auto"
    key_field: str = "key"  # plain JSONL/CSV/parquet: the column holding the image key
    caption_field: str = "caption"  # plain JSONL/CSV/parquet: the column holding the caption
    max_line_bytes: int = 8 << 20  # longer lines are quarantined without being held in memory
    chunk_bytes: int = 16 << 20  # streaming block size
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_line_bytes <= 0 or self.chunk_bytes <= 0:
            raise ValueError("ingest_captions.max_line_bytes and chunk_bytes must be > 0")


class IngestCaptionsStep(Step[IngestCaptionsConfig]):
    name = "ingest_captions"
    upstream = ("aesthetic_filter",)
    code_version = "1"
    description = "Caption files -> caption table joined to kept images, plus quarantine"

    def run(self, ctx: StepContext[IngestCaptionsConfig]) -> StepResult:
        raise NotImplementedError("being written")  # DEV SCAFFOLD: replaced before commit
