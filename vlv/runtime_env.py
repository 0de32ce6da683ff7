"""Process-wide environment defaults, applied by every entry point before Ray, MLflow or torch start.

Set with `setdefault`, so a user's own environment always wins.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from vlv.engine.storage import STORE_ENV_VARS
from vlv.job_env import embedded_ray_env_defaults
from vlv.logs import CONSOLE_ENV_VARS


def apply_runtime_defaults() -> None:
    defaults = {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "WANDB_MODE": "disabled",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Survives runs, so DeepSpeed's CPU ops compile once per machine and Python environment, not once per run.
        # One folder per environment: the build files name the environment's include paths, so environments sharing
        # a folder (several checkouts on one machine) would recompile each other's ops at every run.
        "TORCH_EXTENSIONS_DIR": str(Path.home() / ".cache" / "vlv" / "torch_extensions" / _environment_id()),
        # Fail fast instead of retrying an unreachable MLflow server for minutes.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    }
    if not _has_cuda():
        defaults["DS_ACCELERATOR"] = "cpu"
        defaults["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // 2))
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        # gcsfs's default class asks Google's gRPC control plane about every bucket, which a GCS emulator does
        # not serve: each call would wait out a 60 s timeout. Read when gcsfs is imported, so set it first.
        defaults["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

    defaults.update(embedded_ray_env_defaults())  # an embedded Ray listens on 127.0.0.1 only
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def worker_env_vars() -> dict[str, str]:
    """The defaults above, the console settings (quiet or --verbose, vlv.logs), and where the object store is
    (its endpoint, not its credentials), as Ray `runtime_env` env_vars, so workers on other nodes of a cluster
    get them too."""
    names = ("MLFLOW_DISABLE_TELEMETRY", "NO_ALBUMENTATIONS_UPDATE", "WANDB_MODE", "HF_HUB_DISABLE_TELEMETRY",
             "TOKENIZERS_PARALLELISM", "TORCH_EXTENSIONS_DIR", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
             "MLFLOW_HTTP_REQUEST_TIMEOUT", "DS_ACCELERATOR", "OMP_NUM_THREADS", "VLV_LEASE_TTL_S",
             *CONSOLE_ENV_VARS, *STORE_ENV_VARS)
    job_keys = _job_env_var_keys()  # Ray refuses a ray.init env var that the submitted job already sets
    return {name: os.environ[name] for name in names if name in os.environ and name not in job_keys}


def _job_env_var_keys() -> set[str]:
    import json

    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return set()
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return set()
    return set((runtime_env.get("env_vars") or {}).keys())


def _environment_id() -> str:
    """A short stable name for this Python environment (its prefix)."""
    return hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]


def _has_cuda() -> bool:
    return any(Path(p).exists() for p in ("/dev/nvidia0", "/proc/driver/nvidia/version"))
