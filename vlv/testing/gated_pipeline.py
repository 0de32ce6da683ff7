"""A one-step pipeline whose step the test holds open, run as its own driver process (`python -m ...`).

`slow` writes its output, then waits until `hold_file` exists, so a second invocation can be started while
the first one holds the step's lock. With VLV_TEST_PREFLIGHT_GATE set to a path, the driver plans first and
then waits in preflight until that file exists: the window in which another invocation may publish the
step this one planned to run. Exit codes as `full_run.py`: 0 done, 1 step failed, 2 refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlv.engine.step import Step, StepContext, StepResult
from vlv.engine.store import StoreLockedError
from vlv.logs import configure_logging
from vlv.runtime_env import apply_runtime_defaults

EXPERIMENT = "vlv-faults"
PREFLIGHT_GATE_ENV = "VLV_TEST_PREFLIGHT_GATE"


@dataclass
class SlowSection:
    value: int = 7
    hold_file: str = ""  # run() waits for this file before returning
    counter_dir: str = ""  # every execution appends its pid to <counter_dir>/slow.runs
    extra_files: int = 0  # small files written besides value.txt: a publish with a long upload


@dataclass
class GatedConfig:
    slow: SlowSection = field(default_factory=SlowSection)
    preset: str = "tiny"
    experiment: str = EXPERIMENT

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.slow.__dict__, sort_keys=True).encode()).hexdigest()[:16]


class SlowStep(Step[SlowSection]):
    name = "slow"

    def preflight(self, config: SlowSection) -> None:
        gate = os.environ.get(PREFLIGHT_GATE_ENV)
        while gate and not Path(gate).exists():
            time.sleep(0.05)

    def run(self, ctx: StepContext[SlowSection]) -> StepResult:
        if ctx.config.counter_dir:
            with open(Path(ctx.config.counter_dir) / "slow.runs", "a") as handle:
                handle.write(f"{os.getpid()}\n")
        (ctx.output_dir / "value.txt").write_text(str(ctx.config.value))
        for i in range(ctx.config.extra_files):
            (ctx.output_dir / "extra").mkdir(exist_ok=True)
            (ctx.output_dir / "extra" / f"{i:05d}.txt").write_text(f"file {i}\n" * 20)
        while ctx.config.hold_file and not Path(ctx.config.hold_file).exists():
            time.sleep(0.05)
        return StepResult(metrics={"value": ctx.config.value})


def main(argv: list[str] | None = None) -> int:
    apply_runtime_defaults()  # before the runner brings MLflow and Ray, which read the environment once
    from vlv.run import RunOptions, StepFailed, run_pipeline

    configure_logging()
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--hold-file", default="")
    parser.add_argument("--counter-dir", default="")
    parser.add_argument("--extra-files", type=int, default=0)
    args = parser.parse_args(argv)
    config = GatedConfig(slow=SlowSection(hold_file=args.hold_file, counter_dir=args.counter_dir,
                                          extra_files=args.extra_files))
    try:
        outcome = run_pipeline(RunOptions(config=config, store_uri=args.store, steps=(SlowStep(),)))
    except StoreLockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StepFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for step in outcome.steps:
        print(f"outcome {step.name} {step.status} parent={outcome.parent_run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
