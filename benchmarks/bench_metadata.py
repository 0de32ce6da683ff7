"""prepare_metadata benchmark: LAION filtering + exact URL de-duplication, ours (Ray tasks) vs one DuckDB query.

    python benchmarks/bench_metadata.py [--rows 50000000] [--files 64] [--cache DIR] [--seed 0]
                                        [--num-tasks N] [--cpus-per-task C] [--dedup-partitions P]

1. Synthetic LAION metadata (`vlv.testing.laion_rows`: LAION's column names and types, most images small,
   aspect ratios spread, skewed watermark/unsafe probabilities, duplicate URLs within and across files),
   generated once from the seed into `--cache` (default: <tmp>/vlv-bench-metadata) and reused; not timed.
   The files are then read once, so both sides start from the page cache.
2. DuckDB, in a child process with its default threads: the same filter (paper defaults: shorter side > 512,
   aspect in [0.5, 2], pwatermark a probability < 0.5, URL matching ^https?://\\S) and the same
   de-duplication (the first row of each URL by (file order, row order)) in one SQL statement, written to
   parquet in that order.
3. Ours, in a child process: `vlv.data.laion_prepare.prepare_laion_metadata` (what the step runs) on an
   embedded Ray started before the clock, with the step's default split (2 tasks of 0.75 CPU) unless overridden.
   Peak RSS is the sum over the child and every process it started (Ray's own daemons included), sampled
   every 0.1 s.
4. Exactness: the two outputs must have the same rows in the same order: same row count, same URL set, and
   for every URL the same kept row (each synthetic row has a unique LAION `hash`).

The last line is the rows/s ratio ours / DuckDB (target >= 0.5); RSS (<= 4 GiB) and exactness lines come before.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RSS_TARGET_MIB = 4096
RATIO_TARGET = 0.5


def duckdb_query(files: list[str], output: str) -> str:
    """The filter and first-occurrence de-duplication of `MetadataFilter()` as one DuckDB statement.

    Files are listed in our order (sorted paths), so ordering by filename then file_row_number is (file order,
    row order). Casts mirror ours: sizes and probabilities compared as doubles, probabilities written as doubles.
    """
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    where = (r"regexp_matches(URL, '^https?://\S', 'i') AND WIDTH > 0 AND HEIGHT > 0 "
             "AND least(WIDTH, HEIGHT) > 512 AND WIDTH::DOUBLE / HEIGHT::DOUBLE BETWEEN 0.5 AND 2.0 "
             "AND pwatermark::DOUBLE BETWEEN 0 AND 1 AND pwatermark::DOUBLE < 0.5")
    columns = ("URL, TEXT, WIDTH, HEIGHT, similarity, hash, punsafe::DOUBLE AS punsafe, "
               "pwatermark::DOUBLE AS pwatermark, aesthetic")
    return f"""
        COPY (
            WITH passing AS (
                SELECT * FROM read_parquet([{listed}], filename = true, file_row_number = true) WHERE {where}),
            firsts AS (SELECT min((filename, file_row_number)) AS first FROM passing GROUP BY URL)
            SELECT {columns} FROM passing SEMI JOIN firsts ON (passing.filename, passing.file_row_number) = firsts.first
            ORDER BY filename, file_row_number
        ) TO '{output}' (FORMAT parquet)"""


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_duckdb(files: list[str], output: str) -> dict:
    import duckdb

    connection = duckdb.connect()
    query = duckdb_query(files, output)
    started, started_cpu = time.perf_counter(), _cpu_seconds()
    connection.execute(query)
    wall, cpu = time.perf_counter() - started, _cpu_seconds() - started_cpu
    rows = connection.execute(f"SELECT count(*) FROM '{output}'").fetchone()[0]
    return {"wall_s": wall, "cpu_s": cpu, "rows_kept": rows,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": connection.execute("SELECT current_setting('threads')").fetchone()[0]}


class TreeRss:
    """Samples the summed RSS (and, at the end, CPU time) of this process and all its descendants."""

    def __init__(self, every_s: float = 0.1):
        import psutil

        self._root = psutil.Process()
        self._every_s = every_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def processes(self) -> list:
        return [self._root, *self._root.children(recursive=True)]

    def total_mib(self) -> float:
        import psutil

        total = 0
        for process in self.processes():
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def cpu_seconds(self) -> dict[int, float]:
        import psutil

        seconds = {}
        for process in self.processes():
            try:
                times = process.cpu_times()
                seconds[process.pid] = times.user + times.system
            except psutil.Error:
                pass
        return seconds

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self.total_mib())
            self._stop.wait(self._every_s)

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, self.total_mib())


def child_ours(folder: str, output: str, num_tasks: int, cpus_per_task: float, partitions: int) -> dict:
    from vlv.runtime_env import apply_runtime_defaults

    apply_runtime_defaults()
    import ray

    from vlv.data.laion import MetadataFilter
    from vlv.data.laion_prepare import ParallelPlan, prepare_laion_metadata
    from vlv.engine.executor import connect_ray

    connect_ray()  # an embedded Ray of this process's own (started again once if a busy machine delays it)
    sampler = TreeRss()
    idle_mib = sampler.total_mib()
    plan = ParallelPlan(num_tasks=num_tasks, cpus_per_task=cpus_per_task, num_partitions=partitions)
    cpu_before = sampler.cpu_seconds()
    with sampler:
        started = time.perf_counter()
        funnel = prepare_laion_metadata(folder, output, MetadataFilter(), plan=plan)
        wall = time.perf_counter() - started
    cpu_after = sampler.cpu_seconds()
    cpu = sum(after - cpu_before.get(pid, 0.0) for pid, after in cpu_after.items())
    ray.shutdown()
    return {"wall_s": wall, "cpu_s": cpu, "rows_read": funnel.rows_read, "rows_kept": funnel.rows_kept,
            "duplicate_url": funnel.duplicate_url, "peak_rss_mib": sampler.peak_mib, "idle_rss_mib": idle_mib}


def run_child(role: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", role, *args], capture_output=True, text=True,
                          cwd=HERE.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"{role} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr).strip()[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare_outputs(ours: str, duck: str) -> dict[str, bool]:
    """Same row count, same URL set, same kept row (LAION hash) for every URL, and the same order."""
    import pyarrow.parquet as pq

    a = pq.read_table(ours, columns=["URL", "hash"])
    b = pq.read_table(duck, columns=["URL", "hash"])
    same_count = a.num_rows == b.num_rows
    a_by_url, b_by_url = a.sort_by("URL"), b.sort_by("URL")
    same_urls = same_count and a_by_url["URL"].equals(b_by_url["URL"])
    same_rows = same_urls and a_by_url["hash"].equals(b_by_url["hash"])
    same_order = same_rows and a["URL"].equals(b["URL"]) and a["hash"].equals(b["hash"])
    return {"row count": same_count, "URL set": bool(same_urls), "kept row per URL": bool(same_rows),
            "row order": bool(same_order)}


def warm_page_cache(files: list[Path]) -> None:
    for path in files:
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass


def main(argv: list[str] | None = None) -> int:
    from vlv.steps.prepare_metadata import PrepareMetadataConfig

    defaults = PrepareMetadataConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vlv-bench-metadata"),
                        help="folder of the generated input (reused when rows, files and seed match)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-tasks", type=int, default=defaults.num_tasks)
    parser.add_argument("--cpus-per-task", type=float, default=defaults.cpus_per_task)
    parser.add_argument("--dedup-partitions", type=int, default=defaults.dedup_partitions)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        role, *rest = args.child
        if role == "duckdb":
            result = child_duckdb(rest[1:], rest[0])
        else:
            result = child_ours(rest[0], rest[1], int(rest[2]), float(rest[3]), int(rest[4]))
        print(json.dumps(result))
        return 0

    from vlv.testing.laion_rows import write_synthetic_laion

    folder = Path(args.cache) / f"rows{args.rows}-files{args.files}-seed{args.seed}"
    started = time.time()
    data = write_synthetic_laion(folder, args.rows, args.files, seed=args.seed)
    size_gb = sum(f.stat().st_size for f in data.files) / 1e9
    print(f"input: {args.rows:,} rows in {args.files} files, {size_gb:.2f} GB at {folder} "
          f"(ready in {time.time() - started:.0f} s, not timed)", flush=True)
    warm_page_cache(list(data.files))
    outputs = Path(tempfile.mkdtemp(prefix="bench-metadata-out-"))
    try:
        duck = run_child("duckdb", str(outputs / "duckdb.parquet"), *map(str, data.files))
        print(f"duckdb: {duck['wall_s']:.1f} s", flush=True)
        ours = run_child("ours", str(folder), str(outputs / "ours.parquet"), str(args.num_tasks),
                         str(args.cpus_per_task), str(args.dedup_partitions))
        print(f"ours:   {ours['wall_s']:.1f} s", flush=True)
        exact = compare_outputs(str(outputs / "ours.parquet"), str(outputs / "duckdb.parquet"))
    finally:
        shutil.rmtree(outputs, ignore_errors=True)

    rows = ours["rows_read"]
    ours_rate, duck_rate = rows / ours["wall_s"], rows / duck["wall_s"]
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (2-core machine shared with other jobs)")
    print(f"{'':34}{'ours':>16}{'duckdb':>16}")
    split, threads = f"{args.num_tasks} x {args.cpus_per_task:g} CPU", f"{duck['threads']} threads"
    print(f"{'split':34}{split:>16}{threads:>16}")
    print(f"{'wall s':34}{ours['wall_s']:>16.1f}{duck['wall_s']:>16.1f}")
    print(f"{'CPU s (all processes)':34}{ours['cpu_s']:>16.1f}{duck['cpu_s']:>16.1f}")
    print(f"{'rows/s (wall)':34}{ours_rate:>16,.0f}{duck_rate:>16,.0f}")
    print(f"{'rows/CPU s':34}{rows / ours['cpu_s']:>16,.0f}{rows / duck['cpu_s']:>16,.0f}")
    print(f"{'peak RSS MiB':34}{ours['peak_rss_mib']:>16,.0f}{duck['peak_rss_mib']:>16,.0f}")
    print(f"{'  of which idle Ray, MiB':34}{ours['idle_rss_mib']:>16,.0f}{'':>16}")
    print(f"{'rows kept':34}{ours['rows_kept']:>16,}{duck['rows_kept']:>16,}")
    print(f"{'duplicate URLs dropped':34}{ours['duplicate_url']:>16,}{'':>16}")
    print("exact: " + ", ".join(f"{name} {'equal' if ok else 'DIFFERENT'}" for name, ok in exact.items()))
    rss_met = ours["peak_rss_mib"] <= RSS_TARGET_MIB
    exact_met = all(exact.values())
    ratio = ours_rate / duck_rate
    print(f"result: peak RSS {ours['peak_rss_mib']:,.0f} MiB (target <= {RSS_TARGET_MIB} MiB: "
          f"{'met' if rss_met else 'not met'})")
    print(f"result: exact de-duplication vs duckdb {'equal' if exact_met else 'different'} "
          f"(target equal: {'met' if exact_met else 'not met'})")
    print(f"result: rows/s ratio ours/duckdb {ratio:.2f} (target >= {RATIO_TARGET}: "
          f"{'met' if ratio >= RATIO_TARGET else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
