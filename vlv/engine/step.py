"""What a pipeline step is: a declaration (name, inputs, config section, resources) plus one `run` function.

Modelled on NeMo Curator's stages: a step never calls Ray or MLflow itself. The executor turns the declared
`resources()` into a Ray task, hands the step a `StepContext` (its config section, its upstream outputs, a
local staging folder to write into, a metric logger) and publishes the folder atomically when `run` returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Protocol, TypeVar

from vlv.engine.manifest import Manifest

SectionT = TypeVar("SectionT")


@dataclass(frozen=True)
class Resources:
    """What the Ray task that runs a step asks for (fractions allowed, as in Ray)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass(frozen=True)
class StepOutput:
    """A published step output: where it lives and what its manifest says."""

    step: str
    key: str
    uri: str
    manifest: Manifest

    def path(self, relative: str) -> str:
        """URI (or local path) of one file inside this output."""
        return f"{self.uri.rstrip('/')}/{relative}"

    @property
    def local_dir(self) -> Path:
        """The output as a local folder; only valid for a local store (the default)."""
        if "://" in self.uri and not self.uri.startswith("file://"):
            raise ValueError(f"output of '{self.step}' lives at {self.uri}, not on the local disk")
        return Path(self.uri.removeprefix("file://"))


class MetricLogger(Protocol):
    def log_metric(self, name: str, value: float, step: int | None = None) -> None: ...


@dataclass
class StepContext(Generic[SectionT]):
    """Everything a step may touch while it runs."""

    step: str
    key: str
    preset: str
    config: SectionT
    inputs: dict[str, StepOutput]
    output_dir: Path
    metrics: MetricLogger
    on_cluster: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("vlv"))
    # Durable per-key folder/URI outside the published output (training checkpoints): survives a crash.
    scratch_uri: str = ""
    # A folder shared across keys in a local store (e.g. cached real-image FID statistics); None if remote.
    cache_dir: Path | None = None
    # Where MLflow lives, for steps that read earlier runs' metric histories through vlv.tracking (report).
    tracking_uri: str | None = None

    def input(self, step: str) -> StepOutput:
        if step not in self.inputs:
            raise KeyError(f"step '{self.step}' did not declare '{step}' as an upstream step")
        return self.inputs[step]


@dataclass
class StepResult:
    """What `run` returns: final metrics, and the small files (relative to output_dir) MLflow should hold."""

    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)


class Step(Generic[SectionT]):
    """Base declaration. Subclasses set the class attributes and implement `run` (one level, no deeper)."""

    name: ClassVar[str]
    upstream: ClassVar[tuple[str, ...]] = ()
    # Bump when the step's output for the same config changes meaning; it is part of the cache key.
    code_version: ClassVar[str] = "1"
    # True when a crashed attempt's staging folder should be kept and continued (e.g. img2dataset incremental).
    resumable: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def resources(self, config: SectionT) -> Resources:
        return Resources()

    def preflight(self, config: SectionT) -> None:
        """Raise ValueError before any work starts if this step cannot run (missing input, missing weights)."""

    def run(self, ctx: StepContext[SectionT]) -> StepResult:
        raise NotImplementedError


StepFactory = Callable[[], Step[Any]]
