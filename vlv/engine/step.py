"""What a pipeline step is: a declaration (name, inputs, outputs, config section, its work) plus one `run` function.

Modelled on NeMo Curator's stages: a step never calls Ray or MLflow itself. It declares its work as a function
of its typed config section: the resources of its own task (`resources`) and the worker pools its maps run on
(`worker_pools`: actors, tasks, Ray Train workers). The executor turns `resources()` into a Ray task, hands the
step a `StepContext` (its config section, its upstream outputs, a local staging folder to write into, a metric
logger) and publishes the folder atomically when `run` returns; inside `run` the step maps its items over its
declared pools through `vlv.engine.pools`. The plan (`--dry-run`), the cost estimate (`vlv plan`) and the
cluster preflight read the same declarations (`Step.work`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Literal, Protocol, TypeVar

from vlv.engine.step_output import OutputFile, StepOutput

__all__ = ["MetricLogger", "OutputFile", "Resources", "Step", "StepContext", "StepOutput", "StepResult",
           "StepWork", "WorkerPool"]

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


PoolKind = Literal["actors", "tasks", "train_workers", "processes"]
POOL_KINDS: tuple[str, ...] = ("actors", "tasks", "train_workers", "processes")


@dataclass(frozen=True)
class WorkerPool:
    """A group of workers a step's work runs on besides the step's own task, declared from its config.

    The step runs its map through the executor with this very object (`vlv.engine.pools`), and the plan, the cost
    estimate and the cluster preflight read it, so all four see the same count, CPUs and GPUs. Kinds:
    - "actors": long-lived Ray actors that load a model once and then take item after item
      (`map_on_actors`);
    - "tasks": Ray tasks, one per chunk of the work (`map_on_tasks`);
    - "train_workers": a Ray Train worker group, placed all at once (`gang`);
    - "processes": child processes of the step's own task (img2dataset's multiprocessing): they share the
      task's node and are not placed by Ray, so the cluster preflight does not check them.
    """

    name: str
    kind: PoolKind
    count: int
    cpus: float  # per worker
    gpus: float = 0.0  # per worker
    gang: bool = False  # every worker must be placed at once (Ray Train's placement group)

    def __post_init__(self) -> None:
        if self.kind not in POOL_KINDS:
            raise ValueError(f"worker pool '{self.name}': kind must be one of {', '.join(POOL_KINDS)}, "
                             f"got {self.kind!r}")
        if self.count < 1:
            raise ValueError(f"worker pool '{self.name}': count must be >= 1, got {self.count}")
        if self.cpus < 0 or self.gpus < 0:
            raise ValueError(f"worker pool '{self.name}': cpus and gpus must be >= 0, got {self.cpus} and "
                             f"{self.gpus}")

    @property
    def placed_by_ray(self) -> bool:
        return self.kind != "processes"

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.count} x {self.name} ({self.cpus:g} CPU{gpus} each)"


@dataclass(frozen=True)
class StepWork:
    """Everything a step declares it runs for one config: its own Ray task and its worker pools."""

    task: Resources
    pools: tuple[WorkerPool, ...] = ()

    @property
    def gpus(self) -> float:
        """GPUs held at once: the task's and every Ray-placed pool's."""
        return self.task.num_gpus + sum(p.count * p.gpus for p in self.pools if p.placed_by_ray)

    def pool_of_kind(self, kind: PoolKind) -> WorkerPool | None:
        """The step's first pool of this kind (None if it has none)."""
        return next((p for p in self.pools if p.kind == kind), None)

    def describe(self) -> str:
        gpus = f" + {self.task.num_gpus:g} GPU" if self.task.num_gpus else ""
        parts = [f"task {self.task.num_cpus:g} CPU{gpus}"] + [p.describe() for p in self.pools]
        return "; ".join(parts)


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
        """The workers the step's work runs on besides its own task (none by default). The step hands the same
        objects to `vlv.engine.pools` when it runs, so what is declared is what runs."""
        return ()

    def work(self, config: SectionT) -> StepWork:
        """The step's declared work for this config: what the plan prints, what the cost estimate prices and
        what the cluster preflight places (not overridden: override `resources` and `worker_pools`)."""
        return StepWork(self.resources(config), tuple(self.worker_pools(config)))

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
