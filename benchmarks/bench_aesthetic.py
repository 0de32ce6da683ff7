"""Aesthetic scoring throughput: the `aesthetic_filter` step's actor pool against a bare loop.

    python benchmarks/bench_aesthetic.py [--images 96] [--batch-size 32] [--arch vit-l-14|mini]

Both sides use the same open_clip model (the paper's ViT-L/14 architecture with seeded random weights, saved as
an open_clip `local-dir:` folder, so nothing is downloaded; `--arch mini` uses the paper_mini miniature), the
same LAION v2 MLP predictor, the same batch size and one CPU thread each:
- step: `score_shards` + `_write_scores` of vlv/steps/aesthetic_filter.py on webdataset shards of 384 px JPEGs
  (img2dataset's member layout): one actor reads the tars, decodes, preprocesses, embeds and scores, the driver
  writes scores.parquet. Its wall time includes the actor's one model load.
- bare: the same embedder and predictor in this process on tensors decoded and preprocessed beforehand, so only
  the forward passes are timed.
Both must give the same scores (checked). Ends with `result: step_over_bare <ratio> (target >= 0.7: met|not met)`.
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

from vlv.runtime_env import apply_runtime_defaults
from vlv.testing.photo_shards import write_photo_shards

TARGET = 0.7


def write_shards(folder: Path, count: int, per_shard: int) -> list[str]:
    samples = write_photo_shards(folder, count, per_shard)
    return [str(folder / name) for name in sorted({name for name, _ in samples})]


def write_models(folder: Path, arch: str) -> tuple[str, str]:
    """An open_clip local-dir folder and a v2 predictor file, seeded random; returns (clip_model, weights)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from vlv.models.aesthetic import random_predictor
    from vlv.paper_mini.vision_models import OPEN_CLIP_PREPROCESS

    if arch == "mini":
        from vlv.paper_mini.build import ensure_paper_mini_assets

        assets = ensure_paper_mini_assets()
        return f"local-dir:{assets.open_clip}", str(assets.aesthetic_predictor)
    config = open_clip.get_model_config("ViT-L-14")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14", pretrained=None)
    clip_dir = folder / "open_clip_vit_l14"
    clip_dir.mkdir()
    (clip_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": config,
                                                                "preprocess_cfg": OPEN_CLIP_PREPROCESS}))
    save_file({name: t.contiguous() for name, t in model.state_dict().items()},
              str(clip_dir / "open_clip_model.safetensors"))
    predictor_path = folder / "predictor.pth"
    torch.save(random_predictor("v2-mlp", 0, int(model.visual.output_dim)).state_dict(), predictor_path)
    return f"local-dir:{clip_dir}", str(predictor_path)


def run_step(shards: list[str], cfg, output_dir: Path) -> tuple[float, object]:
    import logging

    from vlv.steps.aesthetic_filter import _write_scores, score_shards

    started = time.perf_counter()
    outcome = _write_scores(score_shards(shards, cfg), output_dir, len(shards), logging.getLogger("bench"))
    return time.perf_counter() - started, outcome.scores


def run_bare(shards: list[str], cfg) -> tuple[float, float, object]:
    """(seconds of the forward passes, seconds of the model load, scores in key order)."""
    import numpy as np
    import torch

    from vlv.models.aesthetic import load_predictor, predict_scores
    from vlv.models.clip_embedder import build_clip_embedder
    from vlv.steps.aesthetic_filter import _decode_image

    torch.set_num_threads(1)
    started = time.perf_counter()
    embedder = build_clip_embedder("pretrained", model_name=cfg.clip_model, pretrained="")
    predictor = load_predictor(cfg.predictor, cfg.predictor_weights, embedder.embed_dim)
    load_s = time.perf_counter() - started
    pixels = []
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in sorted(m.name for m in tar.getmembers() if m.name.endswith(".jpg")):
                batch = {"jpg": [tar.extractfile(member).read()]}
                pixels.append(embedder.preprocess_one(_decode_image(batch, 0)))
    scores = []
    started = time.perf_counter()
    for first in range(0, len(pixels), cfg.batch_size):
        embeddings = embedder.embed_tensors(torch.stack(pixels[first:first + cfg.batch_size]))
        scores.append(predict_scores(predictor, embeddings))
    return time.perf_counter() - started, load_s, np.concatenate(scores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--per-shard", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--arch", choices=["vit-l-14", "mini"], default="vit-l-14")
    args = parser.parse_args(argv)

    apply_runtime_defaults()
    import numpy as np
    import ray

    from vlv.steps.aesthetic_filter import AestheticFilterConfig

    with tempfile.TemporaryDirectory(prefix="vlv-bench-aesthetic-") as tmp:
        root = Path(tmp)
        (root / "shards").mkdir()
        (root / "out").mkdir()
        shards = write_shards(root / "shards", args.images, args.per_shard)
        clip_model, predictor_weights = write_models(root, args.arch)
        cfg = AestheticFilterConfig(model="pretrained", clip_model=clip_model, clip_pretrained="",
                                    predictor_weights=predictor_weights, batch_size=args.batch_size, num_actors=1,
                                    cpus_per_actor=1.0)
        print(f"{args.images} images of 384 px in {len(shards)} shards, {args.arch}, batch {args.batch_size}, "
              f"1 CPU each side; machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            step_s, step_scores = run_step(shards, cfg, root / "out")
        finally:
            ray.shutdown()
        bare_s, load_s, bare_scores = run_bare(shards, cfg)
    step_rate, bare_rate = args.images / step_s, args.images / bare_s
    diff = float(np.max(np.abs(np.asarray(step_scores) - bare_scores)))
    print(f"step (read tars, decode, preprocess, embed, score, write parquet; one model load): {step_s:7.1f} s "
          f"{step_rate:7.2f} images/s")
    print(f"bare loop (forward passes on decoded tensors; its model load of {load_s:.1f} s not counted): "
          f"{bare_s:7.1f} s {bare_rate:7.2f} images/s")
    print(f"scores max absolute difference step vs bare: {diff:.2e}")
    ratio = step_rate / bare_rate
    verdict = "met" if ratio >= TARGET else "not met"
    print(f"result: step_over_bare {ratio:.2f} (target >= {TARGET}: {verdict})")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
