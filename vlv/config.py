"""Loading the root configuration: a preset, then a config file, then `--set` overrides, every key and type checked.

The root config itself (`PipelineConfig`, one typed section per step) is in `vlv.pipeline_config`, which the
presets build; this module sits above both.
"""

from __future__ import annotations

from typing import Any, Mapping

from vlv.config_tree import apply_overrides, flatten, load_config_file
from vlv.pipeline_config import PipelineConfig
from vlv.presets import PRESETS


def load_config(preset: str, config_file: str | None = None, overrides: Mapping[str, Any] | None = None
                ) -> PipelineConfig:
    """Preset, then a config file (nested mapping), then `--set` overrides; every key and type checked."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}")
    merged: dict[str, Any] = {}
    if config_file:
        file_data = load_config_file(config_file)
        if "preset" in file_data and file_data["preset"] != preset:
            raise ValueError(f"config file {config_file} says preset={file_data['preset']!r} but --preset is "
                             f"{preset!r}; pass --preset {file_data['preset']}")
        merged.update(flatten(file_data))
    merged.update(overrides or {})
    if "preset" in merged and merged["preset"] != preset:
        raise ValueError("the preset is chosen with --preset, not with --set preset=...")
    return apply_overrides(PRESETS[preset](), merged)
