"""eval_fid: the generation -> statistics -> FID plumbing (identity generator gives FID 0), the real-image cache,
reconstructions per CFG value, and the step on tiny models (reconstruction + tiny SD text-to-image, 2 sampling
steps, two CFG values each)."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image

from vlv.eval.fid_generation import (
    EvalImage,
    IdentityGenerator,
    ReconstructionGenerator,
    _build_generate,
    fids_against,
    generated_feature_stats,
    real_image_stats,
    real_stats_key,
)
from vlv.eval.inception import InceptionSpec
from vlv.eval.tiny_sets import write_tiny_eval_sets
from vlv.steps.eval_fid import NOT_COMPARABLE, EvalFidConfig, EvalFidStep
from vlv.testing.builders import run_step

SPEC = InceptionSpec(random_init_seed=0, batch_size=4)


def test_identity_generation_has_fid_zero_and_real_stats_are_cached_by_content(ray_session, tmp_path):
    sets = write_tiny_eval_sets(tmp_path / "sets")
    paths = sorted(str(p) for p in sets.captions.images_dir.glob("*.png"))
    others = sorted(str(p) for p in sets.exemplar_captions.images_dir.glob("*.png"))
    cache = tmp_path / "cache"
    real = real_image_stats(paths, SPEC, cache_uri=str(cache), num_workers=2)
    assert not real.cached and real.stats.n == len(paths) == 8
    assert (cache / "fid_real_stats" / f"{real.key}.npz").is_file()

    images = [EvalImage(i, path, "") for i, path in enumerate(paths)]
    generated = generated_feature_stats([IdentityGenerator()], images, SPEC, num_workers=2, batch_size=4,
                                        keep_samples=2)
    identity = generated.stats["identity"]
    assert identity.n == real.stats.n
    np.testing.assert_allclose(identity.sum, real.stats.sum, rtol=1e-6)
    np.testing.assert_allclose(identity.sum_outer, real.stats.sum_outer, rtol=1e-6, atol=1e-6)
    assert generated.sample_ids == [0, 1] and generated.samples["identity"][0].shape[2] == 3

    other = real_image_stats(others, SPEC, cache_uri=str(cache), num_workers=1)
    fids = fids_against(real.stats, {"identity": identity, "other_images": other.stats})
    assert abs(fids["identity"]) < 1e-3
    assert fids["other_images"] > 1.0  # a different image set is far away: the test can fail

    moved = tmp_path / "moved"
    moved.mkdir()
    copies = [str(shutil.copy(p, moved)) for p in reversed(paths)]
    again = real_image_stats(copies, SPEC, cache_uri=str(cache), num_workers=2)
    assert again.cached and again.key == real.key
    np.testing.assert_array_equal(again.stats.sum_outer, real.stats.sum_outer)
    assert real_stats_key(paths, InceptionSpec(random_init_seed=1)) != real.key


def test_reconstructions_follow_the_cfg_label_sampler_and_seed(stage1_output, tmp_path):
    sets = write_tiny_eval_sets(tmp_path / "sets")
    batch = [EvalImage(i, str(p), "") for i, p in enumerate(sorted(sets.captions.images_dir.glob("*.png"))[:2])]
    ddpm = ReconstructionGenerator(stage1_output, num_steps=2, guidance_scales=(1.0, 2.0))
    assert ddpm.sampler == "ddpm" and ddpm.labels() == ["recon_cfg1", "recon_cfg2"]
    generate = _build_generate(ddpm, "cpu")
    cfg1, cfg2 = generate(batch, "recon_cfg1", 5), generate(batch, "recon_cfg2", 5)
    assert len(cfg1) == 2 and cfg1[0].dtype == np.uint8 and cfg1[0].shape[2] == 3
    assert all(np.array_equal(a, b) for a, b in zip(cfg1, generate(batch, "recon_cfg1", 5)))  # seeded: repeats
    assert not np.array_equal(cfg1[0], cfg2[0])  # guidance changes the image
    assert not np.array_equal(cfg1[0], generate(batch, "recon_cfg1", 6)[0])  # so does the seed
    ddim = _build_generate(ReconstructionGenerator(stage1_output, 2, (1.0,), "ddim"), "cpu")
    assert not np.array_equal(cfg1[0], ddim(batch, "recon_cfg1", 5)[0])  # the sampler is passed through


FID_CONFIG = EvalFidConfig(inception_random_seed=0, inception_batch_size=8, max_images=4, recon_num_steps=2,
                           recon_cfg_scales=[1.0, 2.0], t2i_model="tiny", t2i_num_steps=2, t2i_image_size=64,
                           cfg_scales=[3.0, 2.0], generation_batch_size=2, num_workers=1, grid_images=3)


# The whole step: model loads and three 2048-d Frechet distances, ~80 s on 2 CPUs (the tiny full run covers it too).
whole_step = pytest.mark.slow


@pytest.fixture(scope="module")
def fid_output(eval_store, stage1_output, caption_eval_output):
    return run_step(eval_store, EvalFidStep(), FID_CONFIG,
                    {"train_stage1": stage1_output, "caption_eval": caption_eval_output}, "fid0")


@whole_step
def test_step_metrics_and_headline(fid_output):
    metrics = fid_output.manifest.metrics
    recon = ("fid_recon_cfg1", "fid_recon_cfg2")
    assert {"fid", "fid_recon", *recon, "fid_cfg2", "fid_cfg3", "fid_images", "fid_comparable"} <= set(metrics)
    assert metrics["fid"] == metrics["fid_cfg2"]  # the paper's CFG 2, although it is not the first value
    assert metrics["fid_recon"] == metrics["fid_recon_cfg2"]  # the official inference's CFG 2
    assert metrics["fid_images"] == 4 and metrics["fid_comparable"] == 0
    assert all(np.isfinite(metrics[k]) and metrics[k] > 0 for k in (*recon, "fid_cfg2", "fid_cfg3"))
    assert metrics["fid_recon_cfg1"] != metrics["fid_recon_cfg2"]


@whole_step
def test_step_writes_fid_csv_marked_not_comparable(fid_output, eval_store):
    with open(fid_output.local_dir / "fid.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["metric"] for r in rows] == ["fid_recon_cfg1", "fid_recon_cfg2", "fid_cfg3", "fid_cfg2"]
    assert [(r["kind"], r["guidance_scale"], r["sampler"], r["num_steps"]) for r in rows[:2]] == [
        ("reconstruction", "1", "ddpm", "2"), ("reconstruction", "2", "ddpm", "2")]
    assert all(r["num_images"] == "4" and r["comparable"] == "false" and r["note"] == NOT_COMPARABLE for r in rows)
    by_metric = {r["metric"]: float(r["fid"]) for r in rows}
    assert by_metric["fid_cfg2"] == pytest.approx(fid_output.manifest.metrics["fid_cfg2"], abs=1e-5)
    assert list((eval_store.local_root / "cache" / "fid_real_stats").glob("*.npz"))


@whole_step
def test_step_grids_show_originals_beside_generated_images(fid_output):
    assert set(fid_output.manifest.artifacts) == {"fid.csv", "recon_grid.png", "caption_grid.png"}
    with Image.open(fid_output.local_dir / "recon_grid.png") as recon, \
            Image.open(fid_output.local_dir / "caption_grid.png") as caption:
        assert recon.size == (110 + 3 * 130, 18 + 3 * 130)  # 3 columns; originals + one row per recon CFG
        assert caption.size == (110 + 3 * 130, 18 + 3 * 130)  # originals + one row per CFG value


def test_config_validation_and_headline_fallback():
    assert EvalFidConfig(cfg_scales=[1.0, 3.0]).headline_scale() == 1.0
    assert EvalFidConfig(cfg_scales=[1.0, 2.0]).headline_scale() == 2.0
    for bad in ([], [0.5], [2.0, 2.0]):
        with pytest.raises(ValueError, match="eval_fid.cfg_scales"):
            EvalFidConfig(cfg_scales=bad)
        with pytest.raises(ValueError, match="eval_fid.recon_cfg_scales"):
            EvalFidConfig(recon_cfg_scales=bad)
    default = EvalFidConfig()
    assert (default.recon_scheduler, default.recon_num_steps, default.recon_cfg_scales) == ("ddpm", 50,
                                                                                             [1.0, 2.0, 3.0, 4.0])
    assert default.recon_headline_scale() == 2.0 and EvalFidConfig(recon_cfg_scales=[3.0]).recon_headline_scale() == 3
    with pytest.raises(ValueError, match="eval_fid.recon_scheduler must be 'ddpm'"):
        EvalFidConfig(recon_scheduler="euler")  # type: ignore[arg-type]


def test_inception_hash_setting_defaults_to_the_official_file_and_is_checked():
    from vlv.eval.inception import FID_WEIGHTS_SHA256_PREFIX

    assert EvalFidConfig().inception_sha256 == FID_WEIGHTS_SHA256_PREFIX
    assert EvalFidConfig().inception_spec().comparable
    own = "ab" * 32
    spec = EvalFidConfig(inception_sha256=own).inception_spec()
    assert spec.weights_sha256 == own and not spec.comparable and spec.identity == f"inception-sha256-{own}"
    for bad in ("", "6726825", "XYZ12345", "6726825d" * 9):
        with pytest.raises(ValueError, match="eval_fid.inception_sha256 must be the first 8 to 64 lowercase hex"):
            EvalFidConfig(inception_sha256=bad)


def test_paper_preflight_names_missing_inception_weights_and_t2i_weights(tmp_path):
    with pytest.raises(ValueError, match=r"FID Inception weights pt_inception-2015-12-05-6726825d.pth not found.*"
                                         r"eval_fid.inception_weights"):
        EvalFidStep().preflight(EvalFidConfig(inception_weights=str(tmp_path / "missing.pth")))
    with pytest.raises(ValueError, match="eval_fid.t2i_weights is not set"):
        EvalFidStep().preflight(EvalFidConfig(inception_random_seed=0))
    EvalFidStep().preflight(EvalFidConfig(inception_random_seed=0, t2i_model="tiny"))  # nothing missing
