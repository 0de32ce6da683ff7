"""Caption ingestion benchmark: 6M Gemini rows through `ingest_captions`, and ratios to two baselines.

    python benchmarks/bench_ingest.py [--rows 6000000] [--slice 1000000] [--repeats 1] [--keep]

1. Full run: `--rows` Gemini Batch API output lines (0.2% faulty, every kind) through
   `vlv.data.caption_ingest.ingest_captions` with the 6M kept keys (the function, not the whole step: no
   join columns, no plots) in a child process: rows/s and the child's peak RSS (target <= 2 GiB).
2. Side by side on a `--slice`-row file, each in its own child process, same file, same run:
   - ours (`ingest_captions`, default options),
   - ours with the strategy the first design proposed (16 MB blocks parsed by pyarrow's own threads),
   - `pyarrow.json.read_json(path)` (target: ours >= 0.5x its throughput),
   - `for line in f: json.loads(line)` (target: ours faster).
   The slice has no faulty lines, because read_json stops at the first malformed line; ours is also timed on
   the first `--slice` lines of the faulty file. Wall-clock rows/s are the headline; CPU seconds are printed
   too because the machine may be shared (CPU time is less sensitive to other processes).

Files go to benchmarks/_work/ (gitignored) and are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
BYTES_PER_ROW = 1700  # measured mean line size of make_gemini_rows output, rounded up


def kept_keys_array(n: int):
    """The keys f"{i:09d}" for i < n as an Arrow string array, built without n Python strings."""
    import numpy as np
    import pyarrow as pa

    values = np.arange(n, dtype=np.int64)
    data = np.empty((n, 9), np.uint8)
    for digit in range(9):
        data[:, digit] = (values // 10 ** (8 - digit)) % 10 + 48
    offsets = np.arange(0, 9 * n + 1, 9, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(mode: str, path: str, rows: int, out_dir: str) -> dict:
    """One measurement in this (fresh) process; returns wall, CPU, rows and peak RSS."""
    from vlv.runtime_env import apply_runtime_defaults

    apply_runtime_defaults()
    import pyarrow as pa
    import pyarrow.json as pajson

    from vlv.data import caption_lines
    from vlv.data.caption_ingest import IngestOptions, ingest_captions
    from vlv.data.caption_keys import KeptKeys

    result: dict = {"mode": mode}
    kept = None
    if mode in ("ours", "ours_whole_blocks"):  # the kept-key set is an input: built before the clock starts
        built = time.perf_counter()
        kept = KeptKeys(kept_keys_array(rows))
        result["kept_keys_s"] = round(time.perf_counter() - built, 2)
    started_cpu, started = _cpu_seconds(), time.perf_counter()  # imports done: time only the work
    if mode in ("ours", "ours_whole_blocks"):
        options = IngestOptions()
        if mode == "ours_whole_blocks":  # 16 MB blocks, pyarrow's thread pool inside each parse
            options = IngestOptions(parse_bytes=options.chunk_bytes, num_threads=1)

            def threaded_read(data, schema):
                try:
                    return pajson.read_json(pa.BufferReader(pa.py_buffer(data)), parse_options=pajson.ParseOptions(
                        explicit_schema=schema, unexpected_field_behavior="ignore")), None
                except pa.ArrowInvalid:
                    return None, None

            caption_lines._read = threaded_read
        stats = ingest_captions([path], f"{out_dir}/captions.parquet", f"{out_dir}/quarantine.parquet", kept=kept,
                                options=options)
        result.update(rows=stats.rows_read, captions_ok=stats.captions_ok, quarantined=dict(stats.quarantined))
    elif mode == "read_json":
        result["rows"] = pajson.read_json(path).num_rows
    elif mode == "json_loads":
        count = 0
        with open(path, "rb") as handle:
            for line in handle:
                json.loads(line)
                count += 1
        result["rows"] = count
    else:
        raise ValueError(f"unknown mode {mode}")
    result["wall_s"] = time.perf_counter() - started
    result["cpu_s"] = _cpu_seconds() - started_cpu
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def measure(mode: str, path: Path, rows: int) -> dict:
    out_dir = WORK / f"out_{mode}"
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(rows), str(out_dir)],
                          capture_output=True, text=True, cwd=HERE.parent)
    shutil.rmtree(out_dir, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = result["rows"] / result["wall_s"]
    result["rows_per_cpu_s"] = result["rows"] / result["cpu_s"]
    print(f"  {mode:<18} {result['rows']:>10,} rows  {result['wall_s']:7.1f} s wall  {result['cpu_s']:7.1f} s CPU  "
          f"{result['rows_per_s']:>9,.0f} rows/s  peak RSS {result['peak_rss_mib']:,.0f} MiB", flush=True)
    return result


def generate(rows: int, path: Path, faulty: float) -> None:
    from vlv.testing.gemini_rows import write_rows

    started = time.time()
    write_rows(rows, str(path), faulty=faulty)
    print(f"  wrote {path.name}: {rows:,} rows, {path.stat().st_size / 1e9:.2f} GB in {time.time() - started:.0f} s",
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=6_000_000)
    parser.add_argument("--slice", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1, help="side-by-side rounds (medians are reported)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "PATH", "ROWS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, path, rows, out = args.child
        print(json.dumps(child(mode, path, int(rows), out)))
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    need = (args.rows + args.slice) * BYTES_PER_ROW * 1.5
    free = shutil.disk_usage(WORK).free
    print(f"work folder {WORK}: {free / 1e9:.0f} GB free, about {need / 1e9:.0f} GB needed; {os.cpu_count()} CPUs")
    if free < need:
        print("error: not enough disk space for the benchmark files", file=sys.stderr)
        return 2
    full, clean = WORK / f"gemini_{args.rows}.jsonl", WORK / f"gemini_{args.slice}_clean.jsonl"
    faulty_slice = WORK / f"gemini_{args.slice}_faulty.jsonl"
    try:
        print("generating inputs")
        if not full.exists():
            generate(args.rows, full, faulty=0.002)
        if not clean.exists():
            generate(args.slice, clean, faulty=0.0)
        if not faulty_slice.exists():
            with open(full, "rb") as src, open(faulty_slice, "wb") as dst:
                for i, line in enumerate(src):
                    if i == args.slice:
                        break
                    dst.write(line)

        print(f"\n1) {args.rows:,} rows through ingest_captions (child process)")
        big = measure("ours", full, args.rows)
        print(f"   quarantined: {big['quarantined']}")

        print(f"\n2) side by side on {args.slice:,} rows ({clean.stat().st_size / 1e9:.2f} GB, no faulty lines)")
        rounds = {mode: [] for mode in ("ours", "ours_whole_blocks", "read_json", "json_loads")}
        for _ in range(args.repeats):
            for mode in rounds:
                rounds[mode].append(measure(mode, clean, args.slice))
        faulty = measure("ours", faulty_slice, args.slice)

        def median(mode: str, field: str) -> float:
            return statistics.median(r[field] for r in rounds[mode])

        print("\n== results ==")
        verdict = "met" if big["peak_rss_mib"] <= 2048 else "MISSED"
        print(f"{args.rows:,} rows: {big['rows_per_s']:,.0f} rows/s ({big['wall_s']:.0f} s; kept-key set built in "
              f"{big['kept_keys_s']} s before), peak RSS {big['peak_rss_mib']:,.0f} MiB "
              f"(target <= 2048 MiB: {verdict})")
        print(f"\n{'on ' + format(args.slice, ',') + ' rows':<34}{'rows/s':>12}{'rows/CPU-s':>12}"
              f"{'ours / it (wall)':>18}{'ours / it (CPU)':>17}")
        ours_wall, ours_cpu = median("ours", "rows_per_s"), median("ours", "rows_per_cpu_s")
        names = {"ours": "ours (ingest_captions)", "ours_whole_blocks": "ours, 16 MB blocks + arrow threads",
                 "read_json": "pyarrow.json.read_json", "json_loads": "json.loads loop"}
        for mode, name in names.items():
            wall, cpu = median(mode, "rows_per_s"), median(mode, "rows_per_cpu_s")
            print(f"{name:<34}{wall:>12,.0f}{cpu:>12,.0f}{ours_wall / wall:>18.2f}{ours_cpu / cpu:>17.2f}")
        print(f"{'ours on the faulty slice (it)':<34}{faulty['rows_per_s']:>12,.0f}{faulty['rows_per_cpu_s']:>12,.0f}"
              f"{ours_wall / faulty['rows_per_s']:>18.2f}{ours_cpu / faulty['rows_per_cpu_s']:>17.2f}")
        ratio_rj = ours_wall / median("read_json", "rows_per_s")
        ratio_jl = ours_wall / median("json_loads", "rows_per_s")
        print(f"\ntargets: ours/read_json {ratio_rj:.2f} (>= 0.5: {'met' if ratio_rj >= 0.5 else 'MISSED'}); "
              f"ours/json.loads {ratio_jl:.2f} (> 1: {'met' if ratio_jl > 1 else 'MISSED'})")
    finally:
        if not args.keep:
            for path in (full, clean, faulty_slice):
                path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
