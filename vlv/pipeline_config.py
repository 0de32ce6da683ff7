"""The root configuration: one typed section per step, composed here (each section lives beside its step).

Presets (`vlv.presets`) build it; `vlv.config.load_config` applies a config file and `--set` overrides to a preset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from vlv.config_tree import output_settings
from vlv.steps.aesthetic_filter import AestheticFilterConfig
from vlv.steps.caption_eval import CaptionEvalConfig
from vlv.steps.download import DownloadConfig
from vlv.steps.eval_arena import EvalArenaConfig
from vlv.steps.eval_fid import EvalFidConfig
from vlv.steps.eval_vqa import EvalVqaConfig
from vlv.steps.ingest_captions import IngestCaptionsConfig
from vlv.steps.prepare_metadata import PrepareMetadataConfig
from vlv.steps.report import ReportConfig
from vlv.steps.train_stage1 import TrainStage1Config
from vlv.steps.train_stage2 import TrainStage2Config


@dataclass
class PipelineConfig:
    preset: Literal["tiny", "paper", "paper_mini"]
    prepare_metadata: PrepareMetadataConfig
    download: DownloadConfig
    aesthetic_filter: AestheticFilterConfig
    ingest_captions: IngestCaptionsConfig
    train_stage1: TrainStage1Config
    train_stage2: TrainStage2Config
    caption_eval: CaptionEvalConfig
    eval_fid: EvalFidConfig
    eval_vqa: EvalVqaConfig
    eval_arena: EvalArenaConfig
    report: ReportConfig
    experiment: str = "vlv"  # MLflow experiment name
    # How often Ray reruns a step's task after its node or worker process died (not after an exception in the
    # step); the rerun continues what the attempt left in the store. Training survives worker loss on its own.
    step_max_retries: int = 2

    def __post_init__(self) -> None:
        if self.step_max_retries < 0:
            raise ValueError(f"step_max_retries must be >= 0, got {self.step_max_retries}")

    def config_hash(self) -> str:
        """Of the settings outputs depend on: two runs that differ only in a port have the same hash."""
        return hashlib.sha256(json.dumps(output_settings(self), sort_keys=True).encode()).hexdigest()[:16]

