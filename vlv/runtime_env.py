"""Process-wide environment defaults, applied by every entry point before Ray, MLflow or torch start.

Set with `setdefault`, so a user's own environment always wins.
"""

from __future__ import annotations

import os
from pathlib import Path


def apply_runtime_defaults() -> None:
    defaults = {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "WANDB_MODE": "disabled",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Survives runs, so DeepSpeed's CPU ops compile once per machine, not once per run.
        "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "vlv" / "torch_extensions"),
        # Fail fast instead of retrying an unreachable MLflow server for minutes.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    }
    if not _has_cuda():
        defaults["DS_ACCELERATOR"] = "cpu"
        defaults["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // 2))
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def _has_cuda() -> bool:
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/proc/driver/nvidia/version"))
