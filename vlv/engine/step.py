"""What a pipeline step is: a declaration (name, inputs, config section, resources) plus one `run` function.

Modelled on NeMo Curator's stages: a step never calls Ray or MLflow itself. The executor turns the declared
`resources()` into a Ray task, hands the step a `StepContext` (its config section, its upstream outputs, a
local staging folder to write into, a metric logger) and publishes the folder atomically when `run` returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Literal, Protocol, TypeVar

from vlv.engine.step_output import OutputFile, StepOutput

__all__ = ["MetricLogger", "OutputFile", "Resources", "Step", "StepContext", "StepOutput", "StepResult",
           "WorkerPool"]

SectionT = TypeVar("SectionT")

# Presets whose models are all randomly initialised: their scores exercise the code paths and mean nothing.
RANDOM_MODEL_PRESETS = ("tiny", "paper_mini")


@dataclass(frozen=True)
class Resources:
    """What the Ray task that runs a step asks for (fractions allowed, as in Ray).

    `max_retries`: how often Ray reruns the task after a system failure (its node or worker process died);
    the rerun continues from what the attempt left in the store. An exception raised by the step is never
    retried: it is a bug or bad input, and running it again would fail the same way.
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 2


@dataclass(frozen=True)
class WorkerPool:
    """A group of Ray workers a step starts besides its own task (its actors, its tasks, its training workers).

    Declared so the plan, the cost estimate and the cluster preflight read the same facts the step uses.
    `gang`: every worker must be placed at once (Ray Train's placement group), not one after another.
    """

    name: str
    kind: Literal["actors", "tasks", "train_workers"]
    count: int
    cpus: float
    gpus: float = 0.0
    gang: bool = False

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.count} x {self.name} ({self.cpus:g} CPU{gpus} each)"


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
    # A local folder for the output's files: they are published with it (uploaded, on an object store).
    output_dir: Path
    metrics: MetricLogger
    on_cluster: bool = False
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("vlv"))
    # Where this attempt's files live in the store. Large or resumable files may be written here directly
    # (e.g. img2dataset shards): they survive a crash and are published with the rest. Same as output_dir on a
    # local store.
    output_uri: str = ""
    # Durable per-key folder/URI outside the published output (training checkpoints): survives a crash.
    scratch_uri: str = ""
    # A folder (local path or URI) shared across keys in the store: cached real-image FID statistics, answers.
    cache_uri: str = ""
    # Where MLflow lives, for steps that read earlier runs' metric histories through vlv.tracking (report).
    tracking_uri: str | None = None

    @property
    def random_models(self) -> bool:
        """True for a preset of randomly initialised models (tiny, paper_mini): its scores compare with nothing."""
        return self.preset in RANDOM_MODEL_PRESETS

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
    # Upstream steps this one also runs without, when they wait for an input nobody has given yet (see
    # `waiting_for`): the report without the caption arena until the judge's output exists.
    optional_upstream: ClassVar[tuple[str, ...]] = ()
    # Bump when the step's output for the same config changes meaning; it is part of the cache key.
    code_version: ClassVar[str] = "1"
    # True when a crashed attempt's staging folder should be kept and continued (e.g. img2dataset incremental).
    resumable: ClassVar[bool] = False
    description: ClassVar[str] = ""

    # The files this step publishes; readers name them through these declarations (see StepOutput).
    outputs: ClassVar[tuple[OutputFile, ...]] = ()
    # Log this node's CPU / memory / GPU use to the step's MLflow run while it runs (steps that work hard).
    system_metrics: ClassVar[bool] = False
    # Register the published output in MLflow's model registry under this name (the trained captioner).
    registered_model: ClassVar[str | None] = None

    def resources(self, config: SectionT) -> Resources:
        return Resources()

    def worker_pools(self, config: SectionT) -> tuple[WorkerPool, ...]:
        """The Ray workers the step starts besides its own task (none by default)."""
        return ()

    def weight_paths(self, config: SectionT) -> dict[str, str]:
        """Setting name -> the weights file/folder (local path or store URI) the step's workers load.

        The engine checks each where it will be loaded (every node of a cluster) before any step runs; a hub
        id (org/name) is left to the loader. Empty values are skipped (`preflight` says which must be set).
        """
        return {}

    def waiting_for(self, config: SectionT) -> str:
        """What outside input this step still waits for ("" = none): such a step is planned as skipped, with this
        reason, unless named by --steps or --force (then its preflight says what is missing). For inputs made
        between two invocations, like a Batch API job's output."""
        return ""

    def preflight(self, config: SectionT) -> None:
        """Raise ValueError before any work starts if this step cannot run (missing input, missing weights)."""

    def run(self, ctx: StepContext[SectionT]) -> StepResult:
        raise NotImplementedError


StepFactory = Callable[[], Step[Any]]
