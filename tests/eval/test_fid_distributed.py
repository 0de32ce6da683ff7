"""FID statistics over real Ray tasks equal the single-process statistics, for 1, 2 and 3 workers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vlv.eval.fid import (
    FeatureStats,
    distributed_feature_stats,
    feature_stats_for_images,
    fid_from_stats,
)
from vlv.eval.inception import InceptionFeatureExtractor, InceptionSpec

SPEC = InceptionSpec(random_init_seed=0, batch_size=2)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fid_images")
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(40, 56), (64, 48), (33, 33)]):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def single_process(image_paths) -> FeatureStats:
    return feature_stats_for_images(image_paths, InceptionFeatureExtractor(SPEC))


def _assert_same_stats(got: FeatureStats, want: FeatureStats) -> None:
    assert got.n == want.n
    for a, b in ((got.sum, want.sum), (got.sum_outer, want.sum_outer), (got.covariance(), want.covariance())):
        assert np.max(np.abs(a - b)) <= 1e-9 * np.max(np.abs(b))


@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_merged_worker_stats_equal_single_process(ray_session, image_paths, single_process, num_workers):
    merged = distributed_feature_stats(image_paths, SPEC, num_workers=num_workers)
    _assert_same_stats(merged, single_process)


def test_arrays_ship_to_workers_too(ray_session, image_paths, single_process):
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in image_paths]
    _assert_same_stats(distributed_feature_stats(arrays, SPEC, num_workers=2), single_process)


def test_bad_arguments(image_paths):
    with pytest.raises(ValueError, match="no images"):
        distributed_feature_stats([], SPEC, num_workers=2)
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        distributed_feature_stats(image_paths, SPEC, num_workers=0)


def test_missing_weights_surface_from_the_workers(ray_session, image_paths, tmp_path):
    spec = InceptionSpec(weights=str(tmp_path / "missing.pth"), config_field="eval_fid.inception_weights")
    with pytest.raises(ValueError, match="eval_fid.inception_weights"):
        distributed_feature_stats(image_paths, spec, num_workers=2)


@pytest.mark.slow
def test_fid_on_the_tiny_set_2048d(ray_session, tiny_eval_sets):
    """Full 2048-d path on the tiny photos: FID(set, set) ~ 0, distributed FID == single-process FID, and two
    different halves are at a positive distance. (sqrtm of 2048x2048 takes about a CPU-minute each.)"""
    paths = sorted(str(p) for p in tiny_eval_sets.captions.images_dir.glob("*.png"))
    spec = InceptionSpec(random_init_seed=0, batch_size=4)
    single = feature_stats_for_images(paths, InceptionFeatureExtractor(spec))
    merged = distributed_feature_stats(paths, spec, num_workers=2)
    _assert_same_stats(merged, single)
    self_fid = fid_from_stats(single, single)
    # 8 images: a rank-7 2048x2048 covariance, whose sqrtm SciPy computes to ~1e-6 relative (seen: 2e-5 on a
    # trace of 8.8); "about zero" at that precision.
    assert abs(self_fid) < 1e-4 * np.trace(single.covariance())
    extractor = InceptionFeatureExtractor(spec)
    first_half = feature_stats_for_images(paths[:4], extractor)
    second_half = feature_stats_for_images(paths[4:], extractor)
    _assert_same_stats(first_half.merge(second_half), single)
    assert fid_from_stats(first_half, second_half) > 1e-3
