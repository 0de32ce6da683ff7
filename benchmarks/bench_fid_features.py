"""FID feature-extraction throughput over Ray: 2 workers against 1, side by side on the same images.

    python benchmarks/bench_fid_features.py [--images 64] [--batch-size 16] [--weights PATH]

Images are deterministic 256-400 px crops of the scikit-image photos, saved as PNG (paths are what the eval
steps pass). Each configuration runs the real `distributed_feature_stats` end to end: Ray tasks, one Inception
load per worker, decode, resize, forward, float64 statistics, merge. A warm-up run first starts the Ray worker
processes so neither side pays for process start-up. Both runs must give the same statistics; the script
checks that too. Without --weights the seeded random Inception is used (same architecture and cost).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from vlv.runtime_env import apply_runtime_defaults


def make_images(folder: Path, count: int) -> list[str]:
    import numpy as np
    import skimage.data
    from PIL import Image

    sources = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png",
               "coins.png", "hubble_deep_field.jpg"]
    photos = [Image.open(Path(skimage.data.data_dir) / name).convert("RGB") for name in sources]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(256, min(400, *photo.size) + 1))
        left = int(rng.integers(0, photo.width - side + 1))
        top = int(rng.integers(0, photo.height - side + 1))
        paths.append(str(folder / f"{i:04d}.png"))
        photo.crop((left, top, left + side, top + side)).save(paths[-1], compress_level=1)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--weights", default="", help="pt_inception-2015-12-05-6726825d.pth (default: tiny)")
    args = parser.parse_args(argv)

    apply_runtime_defaults()
    import numpy as np
    import ray

    from vlv.eval.fid import distributed_feature_stats
    from vlv.eval.inception import InceptionSpec

    spec = (InceptionSpec(weights=args.weights, batch_size=args.batch_size) if args.weights
            else InceptionSpec(random_init_seed=0, batch_size=args.batch_size))
    started_ray = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if started_ray:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    elif not ray.is_initialized():
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = make_images(Path(tmp), args.images)
            print(f"{len(paths)} images, batch size {args.batch_size}, {args.cpus_per_worker} CPU per worker, "
                  f"weights: {'reference' if spec.comparable else 'seeded random (tiny)'}, "
                  f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
            distributed_feature_stats(paths[:2], spec, num_workers=2, num_cpus_per_worker=args.cpus_per_worker)
            results = {}
            for workers in (1, 2):
                t0 = time.perf_counter()
                stats = distributed_feature_stats(paths, spec, num_workers=workers,
                                                  num_cpus_per_worker=args.cpus_per_worker)
                elapsed = time.perf_counter() - t0
                results[workers] = (elapsed, stats)
                print(f"{workers} worker(s): {elapsed:7.1f} s  {len(paths) / elapsed:6.2f} images/s")
            (t1, s1), (t2, s2) = results[1], results[2]
            diff = np.max(np.abs(s1.sum_outer - s2.sum_outer)) / np.max(np.abs(s1.sum_outer))
            print(f"speed-up 2 workers / 1 worker: {t1 / t2:.2f}x   (statistics max relative difference {diff:.1e})")
            print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        if started_ray:
            ray.shutdown()


if __name__ == "__main__":
    main()
