"""The pipeline: its steps in dependency order (docs/DESIGN.md section 1). Adding a step means adding it here."""

from __future__ import annotations

from vlv.engine.step import Step
from vlv.steps.aesthetic_filter import AestheticFilterStep
from vlv.steps.caption_eval import CaptionEvalStep
from vlv.steps.download import DownloadStep
from vlv.steps.eval_arena import EvalArenaStep
from vlv.steps.eval_fid import EvalFidStep
from vlv.steps.eval_vqa import EvalVqaStep
from vlv.steps.ingest_captions import IngestCaptionsStep
from vlv.steps.prepare_metadata import PrepareMetadataStep
from vlv.steps.report import ReportStep
from vlv.steps.train_stage1 import TrainStage1Step
from vlv.steps.train_stage2 import TrainStage2Step


def pipeline_steps() -> list[Step]:
    return [PrepareMetadataStep(), DownloadStep(), AestheticFilterStep(), IngestCaptionsStep(), TrainStage1Step(),
            TrainStage2Step(), CaptionEvalStep(), EvalFidStep(), EvalVqaStep(), EvalArenaStep(), ReportStep()]


def step_names() -> list[str]:
    return [s.name for s in pipeline_steps()]


def step_by_name(name: str) -> Step:
    for step in pipeline_steps():
        if step.name == name:
            return step
    raise ValueError(f"unknown step '{name}'; valid steps: {', '.join(step_names())}")
