"""Feature statistics and the Frechet distance against independent references (small dimensions: the maths
does not depend on 2048, and sqrtm of 2048x2048 costs a CPU-minute; the 2048-d path is in the slow tests)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from vlv.eval.fid import FeatureStats, fid_from_stats, frechet_distance, merge_feature_stats, split_evenly


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return np.abs(rng.normal(size=(n, d)) @ mixing + 0.5 + shift)  # non-negative, correlated, like pool3


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


def _reference_pytorch_fid(mu1, s1, mu2, s2) -> float:
    from pytorch_fid.fid_score import calculate_frechet_distance

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its sqrtm(disp=False) on SciPy >= 1.16
        return float(calculate_frechet_distance(mu1, s1, mu2, s2))


def _reference_eigen(mu1, s1, mu2, s2) -> float:
    """Independent formula: Tr sqrt(S1 S2) = sum sqrt(eig(R S2 R)), R = S1^(1/2) from a symmetric eigh."""
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(eig, 0, None))))


def test_mean_and_covariance_equal_numpy():
    x = _features(300, 24, seed=0)
    stats = FeatureStats.from_features(x)
    assert stats.n == 300 and stats.dim == 24
    assert _rel(stats.mean(), x.mean(axis=0)) < 1e-12
    assert _rel(stats.covariance(), np.cov(x, rowvar=False)) < 1e-10


def test_batched_updates_and_merges_equal_one_pass():
    x = _features(101, 16, seed=1)
    whole = FeatureStats.from_features(x)
    streamed = FeatureStats.empty(16)
    for start in range(0, 101, 7):
        streamed.update(x[start:start + 7])
    merged = merge_feature_stats([FeatureStats.from_features(x[:10]), FeatureStats.from_features(x[10:60]),
                                  FeatureStats.from_features(x[60:])])
    for other in (streamed, merged):
        assert other.n == whole.n
        assert _rel(other.sum, whole.sum) < 1e-12
        assert _rel(other.sum_outer, whole.sum_outer) < 1e-12


def test_merge_does_not_modify_inputs():
    a, b = FeatureStats.from_features(_features(5, 4, 2)), FeatureStats.from_features(_features(6, 4, 3))
    a_sum = a.sum.copy()
    merged = a.merge(b)
    assert merged.n == 11 and a.n == 5 and np.array_equal(a.sum, a_sum)


def test_npz_round_trip_is_exact(tmp_path):
    stats = FeatureStats.from_features(_features(20, 8, 4))
    stats.save_npz(tmp_path / "s.npz")
    loaded = FeatureStats.load_npz(tmp_path / "s.npz")
    assert loaded.n == 20 and np.array_equal(loaded.sum, stats.sum) and np.array_equal(loaded.sum_outer,
                                                                                        stats.sum_outer)


def test_bad_inputs_are_rejected(tmp_path):
    stats = FeatureStats.empty(8)
    with pytest.raises(ValueError, match=r"features must have shape \(B, 8\), got \(3, 7\)"):
        stats.update(np.zeros((3, 7)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        stats.update(np.full((2, 8), np.nan))
    stats.update(np.ones((1, 8)))
    with pytest.raises(ValueError, match="at least 2 feature vectors, got 1"):
        stats.covariance()
    with pytest.raises(ValueError, match="dimension 8 and 4"):
        stats.merge(FeatureStats.empty(4))
    np.savez(tmp_path / "other.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="not a feature statistics file"):
        FeatureStats.load_npz(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="cannot read feature statistics"):
        FeatureStats.load_npz(tmp_path / "missing.npz")


@pytest.mark.parametrize("n, d", [(500, 32), (20, 32)])  # full-rank, and singular covariances (n < d)
def test_frechet_distance_equals_references(n, d):
    a = FeatureStats.from_features(_features(n, d, seed=5))
    b = FeatureStats.from_features(_features(n, d, seed=6, shift=0.2))
    args = (a.mean(), a.covariance(), b.mean(), b.covariance())
    ours = frechet_distance(*args)
    assert ours > 0
    assert abs(ours - _reference_pytorch_fid(*args)) <= 1e-6 * abs(ours)
    assert abs(ours - _reference_eigen(*args)) <= 1e-6 * abs(ours)
    assert fid_from_stats(a, b) == ours


def test_fid_of_a_set_against_itself_is_zero():
    a = FeatureStats.from_features(_features(400, 32, seed=7))
    assert abs(fid_from_stats(a, a)) < 1e-8 * np.trace(a.covariance())


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mismatched FID statistics"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_split_evenly():
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly([1, 2], 5) == [[1], [2]]
