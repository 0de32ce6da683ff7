"""Download step overhead: the full `download` step vs a bare `img2dataset.download` call, same arguments.

    python benchmarks/bench_download.py [--photos 200] [--per-shard 50] [--repeats 3]

Both sides download the same loopback photo site (built once by the tiny `prepare_metadata` step) into a fresh
folder per repetition, in alternating order. The step side is `execute_step` (staging, site server, URLs mapped
to the served port and back, progress thread, stats aggregation, counts CSV, manifest checksums, publish); the
bare side serves the same site, writes the metadata with the served URLs and calls img2dataset with the very
arguments the step passes. Target: the step takes at most 1.15x the bare call.
Both pay img2dataset's spawn start-up (each spawned process imports torch and albumentations), so on a loaded
two-core machine wall times swing with the neighbours: the CPU time (this process plus its joined children,
img2dataset's pool and logger) is printed beside it as the steadier of the two figures.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (img2dataset's pool and logger are joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    from vlv.runtime_env import apply_runtime_defaults

    apply_runtime_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--per-shard", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)

    import img2dataset  # noqa: F401 - imported once up front, so neither side pays it in its timing

    root = Path(tempfile.mkdtemp(prefix="bench-download-"))
    try:
        return _run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(args: argparse.Namespace, root: Path) -> int:
    import pyarrow.parquet as pq

    from vlv.data.img2dataset_runner import run_img2dataset
    from vlv.data.loopback_site import serve_folder
    from vlv.engine.executor import StepRequest, execute_step
    from vlv.engine.step import StepOutput
    from vlv.engine.store import RunStore
    from vlv.steps.download import DownloadConfig, DownloadStep, img2dataset_job
    from vlv.steps.prepare_metadata import PrepareMetadataConfig, PrepareMetadataStep

    store = RunStore(str(root / "store"))

    def request(step, key, config, inputs):
        return StepRequest(step=step, key=key, preset="tiny", section=config,
                           upstream_keys={k: v.key for k, v in inputs.items()},
                           inputs=inputs, store_uri=store.uri, tracking_uri=None, mlflow_run_id=None, on_cluster=False)

    prepare = PrepareMetadataConfig(source="tiny", min_side=64, tiny_num_images=args.photos, tiny_image_side=320)
    manifest = execute_step(request(PrepareMetadataStep(), "pm", prepare, {}))
    upstream = StepOutput("prepare_metadata", "pm", store.output_uri("prepare_metadata", "pm"), manifest)
    rows = int(manifest.metrics["rows_kept"])
    config = DownloadConfig(image_size=args.image_size, samples_per_shard=args.per_shard, processes_count=2,
                            thread_count=8, timeout_s=5, progress_interval_s=5.0)
    print(f"{rows} URLs ({args.photos} photos + broken rows), shards of {args.per_shard}, "
          f"image_size {args.image_size}, {config.processes_count} processes x {config.thread_count} threads")

    def run_step(rep: int) -> None:
        result = execute_step(request(DownloadStep(), f"dl{rep}", config, {"prepare_metadata": upstream}))
        assert result.metrics["images_ok"] == args.photos, result.metrics

    def run_bare(rep: int) -> None:
        with serve_folder(upstream.local_dir / "loopback_site") as server:
            metadata = pq.read_table(upstream.path("metadata.parquet"))  # the URLs as served, as the step does
            served = metadata.set_column(metadata.schema.get_field_index("URL"), "URL",
                                         server.served_urls().apply_arrow(metadata.column("URL")))
            pq.write_table(served, root / f"served{rep}.parquet")
            job = img2dataset_job(config, str(root / f"served{rep}.parquet"), str(root / f"bare{rep}"),
                                  distributor="multiprocessing")
            run_img2dataset(job, in_subprocess=False)
        assert len(list((root / f"bare{rep}").glob("*_stats.json"))) == -(-rows // args.per_shard)

    wall: dict[str, list[float]] = {"step": [], "bare": []}
    cpu: dict[str, list[float]] = {"step": [], "bare": []}
    for rep in range(args.repeats):
        order = (("step", run_step), ("bare", run_bare)) if rep % 2 == 0 else (("bare", run_bare), ("step", run_step))
        for name, fn in order:
            started, cpu_started = time.perf_counter(), _cpu_seconds()
            fn(rep)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(_cpu_seconds() - cpu_started)
            print(f"  repetition {rep + 1}: {name:<4} {wall[name][-1]:6.2f} s wall, {cpu[name][-1]:6.2f} s CPU")
    for label, times in (("wall", wall), ("CPU", cpu)):
        step_median, bare_median = statistics.median(times["step"]), statistics.median(times["bare"])
        ratio = step_median / bare_median
        print(f"{label:>4}: download step median {step_median:6.2f} s, bare img2dataset median {bare_median:6.2f} s, "
              f"ratio {ratio:.3f} ({(ratio - 1) * 100:+.1f}%), target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
