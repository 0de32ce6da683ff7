"""The stage-1 training input stream at paper resolution: samples/s per CPU core, and the cores the paper needs.

    python benchmarks/bench_input_pipeline.py [--images 512] [--batch-size 64] [--processes 1,2]

What is timed is what each training worker does before the forward pass: `WebDatasetImageStream.batches` over
384 px JPEG shards in img2dataset's layout (tar read, shuffle buffer, JPEG decode, 384 px check/crop, collate),
then the two model views of the batch, `florence_pixels` at Florence-2's 768 px (PIL bicubic, as the official
processor) and `vae_pixels`. Each process is one core (torch and PIL on one thread); with several processes the
streams read disjoint shards, like ranks. The paper's stage 1 consumed about 200K steps x 512 samples in about
4 days on 8 GPUs: about 300 samples/s. The script prints the cores one 8-GPU node needs for that and the
head-room on common instance types (all vCPUs but one per GPU, which runs the training loop).
Ends with `result: headroom_48_vcpu <ratio> (target >= 2.0: met|not met)`.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

from vlv.testing.photo_shards import write_photo_shards

PAPER_SAMPLES_PER_S = 200_000 * 512 / (4 * 24 * 3600)  # about 296
GPUS_PER_NODE = 8
TARGET = 2.0
INSTANCES = (("an 8-GPU node with 48 vCPUs", 48), ("p4d.24xlarge, a2-highgpu-8g (96 vCPUs)", 96),
             ("p5.48xlarge, g6e.48xlarge (192 vCPUs)", 192))


def stream_rate(shards: str, samples: str, rank: int, world_size: int, batch_size: int, batches: int,
                florence_size: int, queue: multiprocessing.Queue) -> None:
    """One rank: time `batches` batches (after one warm-up batch) and put (samples, seconds) on `queue`."""
    import torch

    from vlv.models.image_inputs import florence_pixels, vae_pixels
    from vlv.train.data import ImageStreamConfig, WebDatasetImageStream

    torch.set_num_threads(1)
    stream = WebDatasetImageStream(shards, samples, ImageStreamConfig(image_size=384, shuffle_buffer=256, seed=0))
    iterator = stream.batches(rank=rank, world_size=world_size, batch_size=batch_size)
    next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
        florence_pixels(batch.images, florence_size)
        vae_pixels(batch.images)
    queue.put((batches * batch_size, time.perf_counter() - started))


def measure(shards: str, samples: str, processes: int, batch_size: int, batches: int, florence_size: int) -> float:
    """Total samples/s of `processes` ranks running at once."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=stream_rate, args=(shards, samples, rank, processes, batch_size, batches,
                                                          florence_size, queue)) for rank in range(processes)]
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    return sum(n / seconds for n, seconds in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=6, help="timed batches per process")
    parser.add_argument("--florence-size", type=int, default=768)
    parser.add_argument("--processes", default="1,2", help="process counts to measure, e.g. 1,2")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="vlv-bench-input-") as tmp:
        shards = Path(tmp) / "shards"
        shards.mkdir()
        listed = write_photo_shards(shards, args.images, args.per_shard)
        samples = Path(tmp) / "kept.parquet"
        pq.write_table(pa.table({"key": [k for _, k in listed], "shard": [s for s, _ in listed]}), samples)
        print(f"{args.images} JPEGs of 384 px in {len(set(s for s, _ in listed))} shards; batch {args.batch_size}, "
              f"{args.batches} timed batches per process; Florence view {args.florence_size} px; machine: "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        rates = {}
        for count in [int(p) for p in args.processes.split(",")]:
            rates[count] = measure(str(shards), str(samples), count, args.batch_size, args.batches,
                                   args.florence_size)
            print(f"{count} process(es): {rates[count]:7.1f} samples/s in all, {rates[count] / count:6.1f} per core",
                  flush=True)
    per_core = rates[1] if 1 in rates else min(rate / count for count, rate in rates.items())
    cores = PAPER_SAMPLES_PER_S / per_core
    print(f"the paper's stage-1 rate: {PAPER_SAMPLES_PER_S:.0f} samples/s per 8-GPU node; at {per_core:.1f} samples/s "
          f"per core that needs {cores:.1f} cores")
    for name, vcpus in INSTANCES:
        free = vcpus - GPUS_PER_NODE
        print(f"  {name:48s} {vcpus:4d} vCPU: {free:4d} for input, head-room {free / cores:5.1f}x")
    headroom = (48 - GPUS_PER_NODE) / cores
    verdict = "met" if headroom >= TARGET else "not met"
    print(f"result: headroom_48_vcpu {headroom:.2f} (target >= {TARGET}: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
