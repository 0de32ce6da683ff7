"""Test doubles that travel into Ray Train workers: a task wrapper that kills its worker once, a file logger."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


@dataclass(frozen=True)
class CrashOnceTask:
    """Wraps any TrainTask; kills the worker process of `crash_rank` (os._exit, no cleanup) when it reaches
    micro-batch `crash_batch`, on the first attempt only: the marker file remembers that the crash happened."""

    inner: Any  # the TrainTask whose model, batches and loss are used unchanged
    crash_rank: int
    crash_batch: int
    marker: str

    def build_model(self) -> Any:
        return self.inner.build_model()

    def batches(self, *, rank: int, world_size: int, batch_size: int, start_batch: int) -> Iterator[Any]:
        stream = self.inner.batches(rank=rank, world_size=world_size, batch_size=batch_size, start_batch=start_batch)
        for index, batch in enumerate(stream, start=start_batch):
            if rank == self.crash_rank and index == self.crash_batch and not Path(self.marker).exists():
                Path(self.marker).write_text(f"crashed rank {rank} at micro-batch {index}\n")
                os._exit(1)
            yield batch

    def loss(self, model: Any, batch: Any, generator: Any) -> Any:
        return self.inner.loss(model, batch, generator)


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
