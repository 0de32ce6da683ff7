"""A three-step toy pipeline for engine tests: cheap, deterministic, and able to fail on demand."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vlv.engine.step import Step, StepContext, StepResult


@dataclass
class ToySection:
    value: int = 1
    fail: bool = False  # raise after writing part of the output (a crash mid-step)
    counter_dir: str = ""  # every execution appends a line here, so tests can count runs


@dataclass
class ToyConfig:
    alpha: ToySection = field(default_factory=ToySection)
    beta: ToySection = field(default_factory=ToySection)
    gamma: ToySection = field(default_factory=ToySection)
    preset: str = "tiny"
    experiment: str = "vlv-test"

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, default=str).encode()).hexdigest()[:16]


class _ToyStep(Step[ToySection]):
    def run(self, ctx: StepContext[ToySection]) -> StepResult:
        if ctx.config.counter_dir:
            with open(Path(ctx.config.counter_dir) / f"{self.name}.runs", "a") as handle:
                handle.write(f"{os.getpid()}\n")
        total = ctx.config.value
        for name in self.upstream:
            total += int((ctx.input(name).local_dir / "value.txt").read_text())
        (ctx.output_dir / "partial.txt").write_text("half written")
        if ctx.config.fail:
            raise RuntimeError(f"{self.name} was told to fail")
        (ctx.output_dir / "value.txt").write_text(str(total))
        (ctx.output_dir / "table.csv").write_text(f"name,value\n{self.name},{total}\n")
        ctx.metrics.log_metric("progress", 1.0, step=1)
        return StepResult(metrics={"value": total}, artifacts=["table.csv"])


class Alpha(_ToyStep):
    name = "alpha"


class Beta(_ToyStep):
    name = "beta"
    upstream = ("alpha",)


class Gamma(_ToyStep):
    name = "gamma"
    upstream = ("beta",)


def toy_steps() -> tuple[Step, ...]:
    return (Alpha(), Beta(), Gamma())


def runs(counter_dir: Path, step: str) -> int:
    path = counter_dir / f"{step}.runs"
    return len(path.read_text().splitlines()) if path.exists() else 0
