"""Soak test: the tiny pipeline N times under random faults; reports faults injected, survived and rows lost.

    python benchmarks/soak.py --runs 3                       # data steps, one driver kill per run
    python benchmarks/soak.py --runs 5 --faults 2 --kill-workers --seed 7
    python benchmarks/soak.py --runs 2 --steps all           # through training and evaluation (slow)

Each run serves the tiny photo site on a free port of its own, so a soak can run beside other tiny pipelines
on the same machine; the data holds canonical URLs, so any earlier run of the same config is a --reference.

First one uninterrupted run makes the reference (or pass --reference STORE from an earlier run of the same
code and config). Then each soak run uses a fresh store: while faults remain, an attempt is started, a random
step not yet published is picked, and at a random moment of it (0 to 60% of the step's reference duration
after it took its lock) the DRIVER is SIGKILLed, or with --kill-workers, half the time, one random Ray worker
process of that driver instead. After a driver kill the script checks that no worker survived it and that
nothing partial was published. The same command is rerun until it succeeds (at most --max-attempts times).
Finally every output is compared with the reference: rows of every parquet table, and each file's sha256.

    faults injected   kills that hit a step mid-work (started, not yet published)
    faults survived   of those, the ones whose run finished with outputs identical to the reference, with no
                      surviving worker and no partial output
    rows lost         sum over tables of (reference rows - rows), target 0
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vlv.pipeline import step_names
from vlv.testing.driver_faults import (
    DATA_STEPS,
    Driver,
    file_digests,
    kill_driver,
    kill_random_worker,
    published,
    read_manifest,
    run_driver,
    start_driver,
    step_started,
    stray_folders,
    table_rows,
    wait_for,
)

REACH_TIMEOUT_S = 1800.0


@dataclass
class Fault:
    run: int
    attempt: int
    kind: str  # driver | worker
    step: str
    after_s: float
    hit: bool  # the step was mid-work when the fault landed
    note: str = ""
    orphans: list[str] = field(default_factory=list)  # workers that outlived a killed driver


@dataclass
class RunResult:
    run: int
    attempts: int
    finished: bool
    faults: list[Fault] = field(default_factory=list)
    rows_lost: int = 0
    files_differing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    partial_outputs: list[str] = field(default_factory=list)
    # Attempts that failed with no fault injected in them (e.g. a worker kill's aftermath, a busy machine).
    other_failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return self.finished and not (self.rows_lost or self.files_differing or self.orphans
                                      or self.partial_outputs)


def make_reference(workdir: Path, steps: list[str], extra: list[str]) -> Path:
    store = workdir / "reference"
    print(f"reference: one uninterrupted run into {store}", flush=True)
    for _ in range(3):  # the same command resumes it (e.g. after Ray's fixed 30 s startup limit on a busy machine)
        code, out = run_driver(store, workdir / "reference.log", steps=steps, extra=extra)
        if code == 0:
            return store
        print(f"reference attempt failed: {last_error(out)}", flush=True)
    raise SystemExit(f"the reference run failed (exit {code}); see {workdir / 'reference.log'}")


def last_error(log: str) -> str:
    lines = [line for line in log.splitlines() if line.startswith(("error:", "Exception:", "RuntimeError"))]
    return lines[-1][:300] if lines else "(no error line)"


def inject(driver: Driver, steps: list[str], reference: Path, rng: random.Random, kill_workers: bool,
           run: int, attempt: int) -> Fault | None:
    """Wait for a random unpublished step to start, then kill at a random moment of it."""
    candidates = [s for s in steps if not published(driver.store, s)]
    if not candidates:
        return None
    step = rng.choice(candidates)
    reference_s = read_manifest(published(reference, step)[0]).duration_s
    after_s = rng.uniform(0.0, 0.6 * max(reference_s, 0.5))
    if not wait_for(driver, lambda: step_started(driver, step), REACH_TIMEOUT_S):
        return None  # the attempt ended before the step began (e.g. it failed earlier)
    time.sleep(after_s)
    hit = step_started(driver, step) and driver.proc.poll() is None
    if not hit:
        return Fault(run, attempt, "driver", step, after_s, False, "step finished before the fault landed")
    if kill_workers and rng.random() < 0.5:
        victim = kill_random_worker(driver, rng)
        if victim is not None:
            return Fault(run, attempt, "worker", step, after_s, True, victim)
    report = kill_driver(driver, step)
    note = f"{report.descendants} processes; {len(report.workers)} workers and {len(report.agents)} Ray agents " \
           f"outlived it"
    return Fault(run, attempt, "driver", step, after_s, True, note, report.workers)


def soak_run(run: int, workdir: Path, steps: list[str], extra: list[str], reference: Path, rng: random.Random,
             faults: int, kill_workers: bool, max_attempts: int) -> RunResult:
    started = time.monotonic()
    store = workdir / f"run{run:02d}"
    log = workdir / f"run{run:02d}.log"
    result = RunResult(run, 0, False)
    injected = 0
    while result.attempts < max_attempts:
        result.attempts += 1
        driver = start_driver(store, log, steps=steps, extra=extra)
        hits_before = injected
        # After a miss or a worker kill the driver still runs: the next fault goes into the same attempt.
        while injected < faults and driver.proc.poll() is None:
            fault = inject(driver, steps, reference, rng, kill_workers, run, result.attempts)
            if fault is None:
                break
            result.faults.append(fault)
            injected += fault.hit
            if fault.kind == "driver" and fault.hit:
                result.orphans += fault.orphans
                result.partial_outputs += [str(p) for s in steps for p in stray_folders(store, s)]
            print(f"  run {run} attempt {result.attempts}: {fault.kind} fault in {fault.step} after "
                  f"{fault.after_s:.1f}s ({'hit' if fault.hit else 'missed'}: {fault.note})", flush=True)
        code = driver.proc.wait()
        if code == 0 and all(published(store, s) for s in steps):
            result.finished = True
            break
        if injected == hits_before:  # no fault landed in this attempt, yet it failed
            result.other_failures.append(f"attempt {result.attempts}: exit {code}: {last_error(driver.log())}")
            print(f"  run {run} attempt {result.attempts}: failed without a fault: {result.other_failures[-1]}",
                  flush=True)
    result.seconds = time.monotonic() - started
    if result.finished:
        compare(store, reference, steps, result)
    shutil.rmtree(store / ".staging", ignore_errors=True)
    return result


def compare(store: Path, reference: Path, steps: list[str], result: RunResult) -> None:
    for step in steps:
        ours, theirs = published(store, step)[0], published(reference, step)[0]
        if ours.name != theirs.name:
            result.files_differing.append(f"{step}: key {ours.name} != reference {theirs.name}")
            continue
        ref_rows, rows = table_rows(theirs), table_rows(ours)
        result.rows_lost += sum(max(0, n - rows.get(table, 0)) for table, n in ref_rows.items())
        ref_digests, digests = file_digests(theirs), file_digests(ours)
        result.files_differing += [f"{step}/{path}" for path in sorted(set(ref_digests) | set(digests))
                                   if ref_digests.get(path) != digests.get(path)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", default="data", help="'data' (default), 'all', or a comma-separated list")
    parser.add_argument("--faults", type=int, default=1, help="faults to land per run (default 1)")
    parser.add_argument("--kill-workers", action="store_true", help="half the faults kill a Ray worker instead")
    parser.add_argument("--max-attempts", type=int, default=0, help="default: faults + 3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", default=None, help="store of an uninterrupted run of the same steps")
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    args = parser.parse_args(argv)
    steps = list(DATA_STEPS) if args.steps == "data" else step_names() if args.steps == "all" else \
        [s.strip() for s in args.steps.split(",") if s.strip()]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="vlv-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    extra: list[str] = []
    reference = Path(args.reference) if args.reference else make_reference(workdir, steps, extra)
    missing = [s for s in steps if not published(reference, s)]
    if missing:
        raise SystemExit(f"reference store {reference} has no output of {missing}")

    results = []
    for run in range(1, args.runs + 1):
        result = soak_run(run, workdir, steps, extra, reference, rng, args.faults, args.kill_workers,
                          args.max_attempts or args.faults + 3)
        results.append(result)
        print(f"run {run}: {'finished' if result.finished else 'DID NOT FINISH'} after {result.attempts} "
              f"attempts in {result.seconds:.0f}s; rows lost {result.rows_lost}; files differing "
              f"{result.files_differing or 'none'}; orphans {result.orphans or 'none'}", flush=True)

    hits = [f for r in results for f in r.faults if f.hit]
    survived = sum(len([f for f in r.faults if f.hit]) for r in results if r.clean)
    print()
    print(f"soak: steps {','.join(steps)}; seed {args.seed}; workdir {workdir}")
    print(f"runs                      {len(results)} ({sum(r.finished for r in results)} finished)")
    print(f"faults injected           {len(hits)} (driver SIGKILL {sum(f.kind == 'driver' for f in hits)}, "
          f"Ray worker SIGKILL {sum(f.kind == 'worker' for f in hits)}; "
          f"{sum(not f.hit for r in results for f in r.faults)} missed: step already done)")
    print(f"faults survived           {survived} of {len(hits)}")
    print(f"rows lost                 {sum(r.rows_lost for r in results)} (target 0)")
    print(f"files differing from ref  {sum(len(r.files_differing) for r in results)}")
    print(f"orphan workers            {sum(len(r.orphans) for r in results)}")
    print(f"partial outputs visible   {sum(len(r.partial_outputs) for r in results)}")
    print(f"attempts per run          {', '.join(str(r.attempts) for r in results)}")
    print(f"attempts failed, no fault {sum(len(r.other_failures) for r in results)}")
    print("faults by step            " + ", ".join(
        f"{s}={sum(f.step == s for f in hits)}" for s in steps))
    return 0 if all(r.clean for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
