"""A fully cached rerun against a `--dry-run` of the same command, side by side, alternating, on one store.

    python benchmarks/bench_cached_rerun.py [--store DIR] [--repeats 5]

Both are the user's command as a subprocess (`pipelines/full_run.py --preset tiny --store DIR`, with and without
`--dry-run`), so both pay the same interpreter start and imports. With every step already published, the rerun
must do no more than the dry run: plan, find every key published, print the summary; no Ray, no MLflow run, no
model. Without --store (or with an empty one) the tiny pipeline runs once first, which takes some minutes.
Ends with one line `result: cached_rerun_over_dry_run <ratio> (target <= 3.0: met|not met)`.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 3.0


def run_pipeline(store: Path, *extra: str) -> tuple[float, str]:
    """Wall seconds and output of one `full_run.py` invocation; raises with its output when it fails."""
    command = [sys.executable, str(ROOT / "pipelines" / "full_run.py"), "--preset", "tiny", "--store", str(store),
               *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return elapsed, done.stdout + done.stderr


def count_mlflow_runs(store: Path) -> int:
    with sqlite3.connect(store / "mlflow.db") as db:
        return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="", help="a store holding a finished tiny run (default: a fresh one)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vlv-bench-cached-") as scratch:
        store = Path(args.store) if args.store else Path(scratch) / "store"
        print(f"store {store}; machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        first, _ = run_pipeline(store)
        print(f"first invocation (runs whatever is not yet published): {first:.1f} s", flush=True)
        dry, cached = [], []
        for repeat in range(args.repeats):
            seconds, _ = run_pipeline(store, "--dry-run")
            dry.append(seconds)
            runs_before = count_mlflow_runs(store)
            seconds, _ = run_pipeline(store)
            cached.append(seconds)
            if count_mlflow_runs(store) != runs_before:
                print("warning: the cached rerun opened MLflow runs", flush=True)
            print(f"repeat {repeat + 1}/{args.repeats}: dry run {dry[-1]:.2f} s, cached rerun {cached[-1]:.2f} s",
                  flush=True)
    dry_s, cached_s = statistics.median(dry), statistics.median(cached)
    ratio = cached_s / dry_s
    print(f"median: dry run {dry_s:.2f} s, fully cached rerun {cached_s:.2f} s")
    verdict = "met" if ratio <= TARGET else "not met"
    print(f"result: cached_rerun_over_dry_run {ratio:.2f} (target <= {TARGET}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
