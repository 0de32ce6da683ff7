"""Test doubles that travel into Ray Train workers: a task that kills its worker once, a file metric logger."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from vlv.train.toy_task import ToyRegressionTask


@dataclass(frozen=True)
class CrashOnceTask(ToyRegressionTask):
    """Kills the worker process of `crash_rank` (os._exit, no cleanup) when it reaches micro-batch
    `crash_batch`, on the first attempt only: the marker file remembers that the crash happened."""

    crash_rank: int = 1
    crash_batch: int = 9
    marker: str = ""

    def batches(self, *, rank: int, world_size: int, batch_size: int, start_batch: int) -> Iterator:
        for index, batch in enumerate(super().batches(rank=rank, world_size=world_size, batch_size=batch_size,
                                                      start_batch=start_batch), start=start_batch):
            if rank == self.crash_rank and index == self.crash_batch and not Path(self.marker).exists():
                Path(self.marker).write_text(f"crashed rank {rank} at micro-batch {index}\n")
                os._exit(1)
            yield batch


@dataclass
class JsonlMetricLogger:
    """Appends {"name", "value", "step"} lines to a file (the workers run on this machine in tests)."""

    path: str

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"name": name, "value": float(value), "step": step}) + "\n")

    def series(self, name: str) -> dict[int, float]:
        lines = [json.loads(line) for line in Path(self.path).read_text().splitlines()]
        return {line["step"]: line["value"] for line in lines if line["name"] == name}
