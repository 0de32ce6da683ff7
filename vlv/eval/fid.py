"""FID: exact, mergeable feature statistics and the Frechet distance, single-process or over Ray workers.

Why sums and not per-worker means/covariances: (N, sum x, sum x x^T) in float64 merge by plain addition, so
statistics computed by any number of workers equal the single-process ones up to float64 summation order
(~1e-15 relative), and the FID from them is the FID of the whole set. Features never need to be gathered.

`frechet_distance` is pytorch-fid's `calculate_frechet_distance` (same sqrtm, same eps offset on a singular
product, same tolerance on the imaginary part), written against the SciPy API without its deprecated `disp`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import linalg

from vlv.engine.pools import map_chunks_with_tasks
from vlv.eval.inception import FEATURE_DIM, ImageInput, InceptionFeatureExtractor, InceptionSpec
from vlv.logs import configure_logging, warn_once

log = logging.getLogger("vlv.eval.fid")

_NPZ_FORMAT = "vlv-feature-stats-v1"
_PROGRESS_EVERY_S = 30.0


@dataclass(eq=False)
class FeatureStats:
    """Sufficient statistics of a feature set: count, sum and sum of outer products (float64).

    The count is an int (exact at any size; the brief's "float64 N" is the same number without rounding risk).
    """

    n: int
    sum: np.ndarray  # (dim,) float64
    sum_outer: np.ndarray  # (dim, dim) float64

    def __post_init__(self) -> None:
        self.sum = np.asarray(self.sum, dtype=np.float64)
        self.sum_outer = np.asarray(self.sum_outer, dtype=np.float64)
        dim = self.sum.shape[0] if self.sum.ndim == 1 else -1
        if dim < 1 or self.sum_outer.shape != (dim, dim) or self.n < 0:
            raise ValueError(f"inconsistent FeatureStats: n={self.n}, sum shape {self.sum.shape}, sum_outer shape "
                             f"{self.sum_outer.shape} (expected (d,) and (d, d), n >= 0)")

    @classmethod
    def empty(cls, dim: int = FEATURE_DIM) -> FeatureStats:
        return cls(n=0, sum=np.zeros(dim, dtype=np.float64), sum_outer=np.zeros((dim, dim), dtype=np.float64))

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStats:
        stats = cls.empty(np.asarray(features).shape[-1])
        stats.update(features)
        return stats

    @property
    def dim(self) -> int:
        return self.sum.shape[0]

    def update(self, features: np.ndarray) -> None:
        """Add a (B, dim) batch of features."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (B, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinite values; check the images and the Inception weights")
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sum_outer += x.T @ x

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The statistics of the union of both sets (a new object; neither input changes)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge feature statistics of dimension {self.dim} and {other.dim}")
        return FeatureStats(n=self.n + other.n, sum=self.sum + other.sum, sum_outer=self.sum_outer + other.sum_outer)

    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise ValueError("the mean of an empty feature set is undefined")
        return self.sum / self.n

    def covariance(self) -> np.ndarray:
        """Unbiased (N - 1) sample covariance, as `numpy.cov(features, rowvar=False)` and pytorch-fid."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        mu = self.mean()
        return (self.sum_outer - self.n * np.outer(mu, mu)) / (self.n - 1)

    def save_npz(self, path: str | Path) -> None:
        np.savez(path, format=np.array(_NPZ_FORMAT), n=np.array(self.n, dtype=np.int64), sum=self.sum,
                 sum_outer=self.sum_outer)

    @classmethod
    def load_npz(cls, path: str | Path) -> FeatureStats:
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {"format", "n", "sum", "sum_outer"} - set(data.files)
                if missing or str(data["format"]) != _NPZ_FORMAT:
                    raise ValueError(f"{path} is not a feature statistics file written by FeatureStats.save_npz "
                                     f"(missing {sorted(missing)} or format is not {_NPZ_FORMAT})")
                return cls(n=int(data["n"]), sum=data["sum"], sum_outer=data["sum_outer"])
        except (OSError, EOFError) as exc:
            raise ValueError(f"cannot read feature statistics {path}: {exc}") from exc


def merge_feature_stats(parts: Sequence[FeatureStats]) -> FeatureStats:
    if not parts:
        raise ValueError("nothing to merge: no feature statistics given")
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    return merged


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), with pytorch-fid's numerical safeguards."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"mismatched FID statistics: means {mu1.shape} and {mu2.shape}, covariances "
                         f"{sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings(record=True) as caught:  # scipy's "Matrix is singular", said once below
        warnings.simplefilter("always", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    for other in (w for w in caught if not issubclass(w.category, linalg.LinAlgWarning)):
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if any(issubclass(w.category, linalg.LinAlgWarning) for w in caught):
        warn_once(log, "FID: the covariance product is singular (fewer images than its %d features?); its square "
                       "root is approximate, as in pytorch-fid", sigma1.shape[0])
    if not np.isfinite(covmean).all():
        log.warning("FID: singular covariance product; adding %g to the diagonal of both covariances", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrt of the covariance product has an imaginary component of "
                             f"{np.max(np.abs(covmean.imag)):.3g}; the statistics are numerically unusable")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean(), a.covariance(), b.mean(), b.covariance())


def feature_stats_for_images(images: Sequence[ImageInput], extractor: InceptionFeatureExtractor) -> FeatureStats:
    """Stream images through the extractor batch by batch into statistics (features are never all held)."""
    stats = FeatureStats.empty()
    batch_size = extractor.spec.batch_size
    started = last_log = time.monotonic()
    for start in range(0, len(images), batch_size):
        stats.update(extractor.features(images[start:start + batch_size]))
        now = time.monotonic()
        if now - last_log >= _PROGRESS_EVERY_S:
            log.info("FID features: %d/%d images, %.1f images/s", stats.n, len(images), stats.n / (now - started))
            last_log = now
    return stats


def split_evenly(items: Sequence, num_chunks: int) -> list[list]:
    """Contiguous chunks whose sizes differ by at most one; never an empty chunk."""
    num_chunks = min(num_chunks, len(items))
    base, extra = divmod(len(items), num_chunks)
    chunks, start = [], 0
    for i in range(num_chunks):
        end = start + base + (1 if i < extra else 0)
        chunks.append(list(items[start:end]))
        start = end
    return chunks


@dataclass(frozen=True)
class _StatsJob:
    spec: InceptionSpec
    images: list


def _stats_job(job: _StatsJob) -> FeatureStats:
    """One Ray task: load the Inception once, then stream this worker's images into statistics."""
    configure_logging()
    return feature_stats_for_images(job.images, InceptionFeatureExtractor(job.spec))


def distributed_feature_stats(images: Sequence[ImageInput], spec: InceptionSpec, *, num_workers: int,
                              num_cpus_per_worker: float = 1.0, num_gpus_per_worker: float = 0.0) -> FeatureStats:
    """Split `images` (paths, preferably: they ship cheaply) over `num_workers` Ray tasks, each loading the
    Inception once and returning its statistics; merge them on the driver. Equals the single-process result."""
    if not images:
        raise ValueError("no images to compute FID statistics for")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if num_gpus_per_worker > 0 and spec.device == "cpu":
        spec = dataclasses.replace(spec, device="cuda")
    jobs = [_StatsJob(spec, chunk) for chunk in split_evenly(images, num_workers)]
    log.debug("FID statistics for %d images over %d Ray tasks", len(images), len(jobs))
    parts = map_chunks_with_tasks(_stats_job, jobs, num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker,
                                  name="vlv:fid_features")
    return merge_feature_stats(parts)
