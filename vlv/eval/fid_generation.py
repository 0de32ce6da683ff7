"""Generate images and turn them straight into FID statistics, over Ray tasks; real-image statistics, cached.

Why generation and features share a task: the generated images are only needed as Inception features, so each
Ray task loads its generator and the Inception once, generates its chunk of the evaluation set batch by batch and
returns exact float64 sums (`FeatureStats`), which merge by addition into the statistics of the whole set (the
same arithmetic as `distributed_feature_stats`). Images never travel, except the few kept for sample grids.

Generators: `ReconstructionGenerator` (image -> stage-1 caption embeddings -> frozen SD sampling) and
`CaptionGenerator` (caption text -> a text-to-image pipeline, for each of its `CaptionSource`s: VLV's captions and
other captioners'), each one pass per CFG value with the same noise seeds, and `IdentityGenerator` (the originals
themselves: FID against the real statistics must then be ~0, which tests the plumbing).

Real-image statistics are computed from the image FILES with `distributed_feature_stats` (pytorch-fid's way)
and cached under a key made of the files' content hashes and the Inception's identity, so a rerun with another
model (another step key) reuses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vlv.engine.pools import map_chunks_with_tasks
from vlv.engine.storage import filesystem, read_bytes
from vlv.eval.arena import VLV
from vlv.eval.fid import FeatureStats, distributed_feature_stats, fid_from_stats, split_evenly
from vlv.eval.inception import InceptionFeatureExtractor, InceptionSpec
from vlv.eval.text_to_image import TextToImageSpec, build_text_to_image, generate_from_captions
from vlv.logs import configure_logging
from vlv.models.image_files import image_as_array
from vlv.models.trained_folder import load_stage1
from vlv.progress import rate_and_eta

log = logging.getLogger("vlv.eval.fid_generation")

_CACHE_FORMAT = "vlv-real-fid-stats-v1"
_PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class EvalImage:
    image_id: int
    path: str
    caption: str  # the caption under evaluation (caption FID); unused by the other generators


@dataclass(frozen=True)
class ReconstructionGenerator:
    """Stage-1 reconstructions, one pass per CFG value (labels `recon_cfg<k>`), all from the same noise seeds."""

    stage1: Any  # train_stage1's published output (a StepOutput): each task fetches it where it runs
    num_steps: int
    guidance_scales: tuple[float, ...]
    sampler: str = "ddpm"  # "ddpm" (the official inference) or "ddim"

    def labels(self) -> list[str]:
        return [recon_label(scale) for scale in self.guidance_scales]


@dataclass(frozen=True)
class CaptionSource:
    """Whose captions a caption generator draws: the evaluation images' own (VLV's, `captions` None) or another
    captioner's, by image id."""

    name: str = VLV
    captions: Mapping[int, str] | None = None

    def caption(self, image: EvalImage) -> str:
        return image.caption if self.captions is None else self.captions[image.image_id]

    def restricted_to(self, images: Sequence[EvalImage]) -> CaptionSource:
        """Only the captions of `images` (what one task needs), so a task does not carry the whole file."""
        if self.captions is None:
            return self
        return CaptionSource(self.name, {image.image_id: self.captions[image.image_id] for image in images})


@dataclass(frozen=True)
class CaptionGenerator:
    """Caption FID: every source's captions through one text-to-image pipeline (loaded once per task), per CFG."""

    spec: TextToImageSpec
    guidance_scales: tuple[float, ...]
    sources: tuple[CaptionSource, ...] = (CaptionSource(),)

    def labels(self) -> list[str]:
        return list(self.passes())

    def passes(self) -> dict[str, tuple[CaptionSource, float]]:
        """label -> (whose captions, guidance scale), sources in order, each over every scale."""
        return {caption_label(source.name, scale): (source, scale) for source in self.sources
                for scale in self.guidance_scales}

    def restricted_to(self, images: Sequence[EvalImage]) -> CaptionGenerator:
        return CaptionGenerator(self.spec, self.guidance_scales,
                                tuple(source.restricted_to(images) for source in self.sources))


@dataclass(frozen=True)
class IdentityGenerator:
    """The originals as decoded from their files: a generator whose FID to the real images is 0."""

    def labels(self) -> list[str]:
        return ["identity"]


Generator = ReconstructionGenerator | CaptionGenerator | IdentityGenerator


def cfg_label(scale: float) -> str:
    return f"cfg{scale:g}"


def recon_label(scale: float) -> str:
    return f"recon_{cfg_label(scale)}"


def caption_label(captioner: str, scale: float) -> str:
    """`cfg<k>` for VLV's captions (the headline caption FID), `caption_<captioner>_cfg<k>` for the others."""
    return cfg_label(scale) if captioner == VLV else f"caption_{captioner}_{cfg_label(scale)}"


@dataclass(frozen=True)
class GenerationJob:
    """One Ray task: a generator over a chunk of the evaluation images, features by the given Inception."""

    generator: Generator
    images: tuple[EvalImage, ...]
    inception: InceptionSpec
    batch_size: int = 4
    seed: int = 0
    keep_samples: int = 0  # images kept per label for grids (the first chunk only needs them)
    device: str = "cpu"
    num_threads: int = 1


@dataclass
class GenerationResult:
    stats: dict[str, FeatureStats]  # label -> statistics of this chunk's generated images
    samples: dict[str, list[np.ndarray]] = field(default_factory=dict)  # label -> uint8 (H, W, 3) images
    sample_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0


def run_generation_job(job: GenerationJob) -> GenerationResult:
    """Generate every label's images for the chunk, batch by batch, into per-label statistics."""
    import torch

    configure_logging()
    torch.set_num_threads(max(1, job.num_threads))
    started = time.monotonic()
    extractor = InceptionFeatureExtractor(job.inception)
    generate = _build_generate(job.generator, job.device)
    result = GenerationResult(stats={}, sample_ids=[image.image_id for image in job.images[:job.keep_samples]])
    total = len(job.images) * len(job.generator.labels())
    done, last_log = 0, started
    for label in job.generator.labels():
        stats = FeatureStats.empty()
        kept: list[np.ndarray] = []
        for start in range(0, len(job.images), job.batch_size):
            batch = job.images[start:start + job.batch_size]
            images = generate(batch, label, batch_seed(job.seed, batch[0].image_id))
            stats.update(extractor.features(images))
            kept += images[:max(0, job.keep_samples - len(kept))]
            done += len(batch)
            if time.monotonic() - last_log >= _PROGRESS_EVERY_S:
                last_log = time.monotonic()
                log.info("FID generation: %d/%d images, %s", done, total,
                         rate_and_eta(done, total, last_log - started, "images"))
        result.stats[label] = stats
        result.samples[label] = kept
    result.seconds = time.monotonic() - started
    return result


def batch_seed(seed: int, first_image_id: int) -> int:
    """Noise seed of a batch: fixed by the config and the batch's first image, the same for every label."""
    return (seed * 1_000_003 + first_image_id) % (2 ** 63)


def _build_generate(generator: Generator, device: str):
    """A function (images, label, seed) -> list of uint8 (H, W, 3) arrays; models load here, once per task."""
    if isinstance(generator, IdentityGenerator):
        return lambda batch, label, seed: [_read_rgb(image.path) for image in batch]
    if isinstance(generator, ReconstructionGenerator):
        import torch

        model = load_stage1(generator.stage1.local_folder()).to(device)
        size = model.embedder.image_size
        recon_scales = dict(zip(generator.labels(), generator.guidance_scales))

        def reconstruct(batch, label, seed):
            pixels = torch.from_numpy(np.stack([image_as_array(image.path, size) for image in batch]))
            out = model.generate_images(pixels, num_steps=generator.num_steps, guidance_scale=recon_scales[label],
                                        generator=torch.Generator().manual_seed(seed), sampler=generator.sampler)
            return list(out.cpu().numpy())

        return reconstruct

    pipeline = build_text_to_image(generator.spec, device)
    passes = generator.passes()

    def from_captions(batch, label, seed):
        source, scale = passes[label]
        return generate_from_captions(pipeline, [source.caption(image) for image in batch], spec=generator.spec,
                                      guidance_scale=scale, seed=seed)

    return from_captions


def _read_rgb(path: str) -> np.ndarray:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(read_bytes(path))) as opened:  # a local file or a store URI
        return np.asarray(opened.convert("RGB"), dtype=np.uint8)


@dataclass
class GeneratedSets:
    stats: dict[str, FeatureStats]
    samples: dict[str, list[np.ndarray]]
    sample_ids: list[int]


def generated_feature_stats(generators: Sequence[Generator], images: Sequence[EvalImage], inception: InceptionSpec,
                            *, num_workers: int, num_cpus_per_worker: float = 1.0, num_gpus_per_worker: float = 0.0,
                            batch_size: int = 4, seed: int = 0, keep_samples: int = 0) -> GeneratedSets:
    """Every generator's images of `images` as statistics per label: `num_workers` chunks per generator, each a Ray
    task, at most `num_workers` of them running at once (the worker pool the step declares)."""
    if not images:
        raise ValueError("no evaluation images to generate from")
    device = "cuda" if num_gpus_per_worker > 0 else "cpu"
    if device == "cuda" and inception.device == "cpu":
        from dataclasses import replace

        inception = replace(inception, device="cuda")
    chunks = split_evenly(list(images), num_workers)
    jobs = [GenerationJob(generator=_for_chunk(generator, chunk), images=tuple(chunk), inception=inception,
                          batch_size=batch_size, seed=seed, keep_samples=keep_samples if i == 0 else 0, device=device,
                          num_threads=max(1, int(num_cpus_per_worker)))
            for generator in generators for i, chunk in enumerate(chunks)]
    results = map_chunks_with_tasks(run_generation_job, jobs, num_cpus=num_cpus_per_worker,
                                    num_gpus=num_gpus_per_worker, name="vlv:fid_generation", max_concurrent=num_workers)
    merged: dict[str, FeatureStats] = {}
    samples: dict[str, list[np.ndarray]] = {}
    sample_ids: list[int] = []
    for result in results:
        for label, stats in result.stats.items():
            merged[label] = merged[label].merge(stats) if label in merged else stats
        for label, kept in result.samples.items():
            if kept:
                samples[label] = kept
                sample_ids = sample_ids or result.sample_ids
    return GeneratedSets(stats=merged, samples=samples, sample_ids=sample_ids)


def _for_chunk(generator: Generator, chunk: Sequence[EvalImage]) -> Generator:
    return generator.restricted_to(chunk) if isinstance(generator, CaptionGenerator) else generator


def _fid_task(pair: tuple[FeatureStats, FeatureStats]) -> float:
    return fid_from_stats(*pair)


def fids_against(real: FeatureStats, generated: dict[str, FeatureStats], *, num_cpus: float = 1.0
                 ) -> dict[str, float]:
    """FID of each label's statistics against the real ones, one Ray task each (a 2048-d sqrtm is slow)."""
    labels = list(generated)
    values = map_chunks_with_tasks(_fid_task, [(real, generated[label]) for label in labels], num_cpus=num_cpus,
                                   name="vlv:frechet_distance")
    return dict(zip(labels, values))


# -- real-image statistics, cached ----------------------------------------------------------------------------


def inception_identity(spec: InceptionSpec) -> str:
    return spec.identity


def real_stats_key(paths: Sequence[str | Path], spec: InceptionSpec) -> str:
    """Content hashes of the files (any order, any location) + the Inception's identity."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        digests = sorted(pool.map(_file_sha256, [str(p) for p in paths]))
    payload = json.dumps({"format": _CACHE_FORMAT, "inception": inception_identity(spec), "images": digests})
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _file_sha256(path: str) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()


@dataclass(frozen=True)
class RealStats:
    stats: FeatureStats
    key: str
    cached: bool  # True when read from the cache instead of computed


def real_image_stats(paths: Sequence[str | Path], spec: InceptionSpec, *, cache_uri: str | None, num_workers: int,
                     num_cpus_per_worker: float = 1.0, num_gpus_per_worker: float = 0.0) -> RealStats:
    """Statistics of the original image files, from `<cache_uri>/fid_real_stats/<key>.npz` when present.

    The cache lives in the store (a local folder or an object store), shared by every run on it.
    """
    import io

    started = time.monotonic()
    key = real_stats_key(paths, spec)
    log.debug("hashed %d real images in %.1fs: statistics key %s", len(paths), time.monotonic() - started, key)
    cached = f"{cache_uri.rstrip('/')}/fid_real_stats/{key}.npz" if cache_uri else None
    if cached is not None:
        fs, path = filesystem(cached)
        if fs.exists(path):
            stats = FeatureStats.load_npz(io.BytesIO(fs.cat_file(path)))
            if stats.n == len(paths):
                log.info("real-image FID statistics from the cache (%s, %d images)", cached, stats.n)
                return RealStats(stats, key, cached=True)
            log.warning("ignoring cached FID statistics %s: %d images, expected %d", cached, stats.n, len(paths))
    stats = distributed_feature_stats([str(p) for p in paths], spec, num_workers=num_workers,
                                      num_cpus_per_worker=num_cpus_per_worker, num_gpus_per_worker=num_gpus_per_worker)
    if cached is not None:
        buffer = io.BytesIO()
        stats.save_npz(buffer)
        fs, path = filesystem(cached)
        if fs.protocol in ("file", "local") or "file" in fs.protocol:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            partial = Path(path).with_name(f".{key}.{os.getpid()}.npz")
            partial.write_bytes(buffer.getvalue())
            os.replace(partial, path)  # atomic: a concurrent reader sees the whole file or none
        else:
            fs.pipe_file(path, buffer.getvalue())  # one PUT: all or nothing
    return RealStats(stats, key, cached=False)
