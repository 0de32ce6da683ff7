"""The aesthetic_filter step on real webdataset tars: Ray Data read, actor pool, parquet outputs, plots."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from skimage import data

from vlv.engine.executor import StepRequest, execute_step
from vlv.engine.manifest import Manifest, list_files
from vlv.engine.step import StepOutput
from vlv.engine.store import RunStore
from vlv.models.aesthetic import predict_scores, random_predictor
from vlv.models.clip_embedder import build_clip_embedder
from vlv.steps.aesthetic_filter import (
    AestheticFilterConfig,
    AestheticFilterStep,
    _list_shards,
    _write_kept,
    choose_threshold,
)

PHOTOS = ("astronaut", "coffee", "chelsea", "camera", "rocket", "coins", "moon", "brick", "grass", "retina")
CORRUPT_KEY = "000010004"
TRUNCATED_KEY = "000000006"


def _jpeg(name: str) -> bytes:
    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    image.thumbnail((64, 64))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(payload), 0
    archive.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def download_output(tmp_path_factory) -> StepOutput:
    """Two img2dataset-style shards: 10 real photos, one random-bytes .jpg and one truncated .jpg."""
    root = tmp_path_factory.mktemp("download")
    shards = root / "shards"
    shards.mkdir()
    samples = [(f"0000{s}{i:04d}", _jpeg(name)) for s, i, name in
               [(0, i, n) for i, n in enumerate(PHOTOS[:6])] + [(1, i, n) for i, n in enumerate(PHOTOS[6:])]]
    samples.insert(6, (TRUNCATED_KEY, samples[4][1][: len(samples[4][1]) // 2]))
    samples.append((CORRUPT_KEY, bytes(range(256)) * 4))
    for shard in ("00000", "00001"):
        with tarfile.open(shards / f"{shard}.tar", "w") as archive:
            for key, jpeg in (s for s in samples if s[0].startswith(shard)):
                meta = {"url": f"http://127.0.0.1:1/{key}.jpg", "key": key, "status": "success"}
                _add(archive, f"{key}.jpg", jpeg)
                _add(archive, f"{key}.json", json.dumps(meta).encode())
                _add(archive, f"{key}.txt", f"caption of {key}".encode())
    manifest = Manifest(step="download", key="dl0", code_version="1", config={}, upstream={},
                        files=list_files(root), metrics={})
    return StepOutput(step="download", key="dl0", uri=str(root), manifest=manifest)


def _run(store: Path, upstream: StepOutput, config: AestheticFilterConfig, key: str = "af0") -> tuple[Manifest, Path]:
    request = StepRequest(step=AestheticFilterStep(), key=key, preset="tiny", section=config,
                          upstream_keys={"download": upstream.key},
                          inputs={"download": upstream}, store_uri=str(store), tracking_uri=None,
                          mlflow_run_id=None, on_cluster=False)
    manifest = execute_step(request)
    return manifest, Path(RunStore(str(store)).output_uri("aesthetic_filter", key))


TINY = AestheticFilterConfig(model="tiny-random", keep="top_quantile", keep_top_quantile=0.5, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def two_runs(ray_session, download_output, tmp_path_factory):
    return [_run(tmp_path_factory.mktemp(f"store{i}"), download_output, TINY) for i in range(2)]


def test_counts_quantile_and_outputs(two_runs):
    manifest, out = two_runs[0]
    scores = pq.read_table(out / "scores.parquet")
    kept = pq.read_table(out / "kept.parquet")
    assert manifest.metrics["images_scored"] == scores.num_rows == 10
    assert manifest.metrics["images_undecodable"] == 2
    assert manifest.metrics["images_kept"] == kept.num_rows == 5  # top half of 10 distinct scores
    assert scores.column_names == ["key", "shard", "url", "caption", "score", "embedding"]
    assert str(scores.schema.field("score").type) == "float"
    assert str(scores.schema.field("embedding").type) == "list<element: float>"
    assert kept.column_names == ["key", "shard", "url", "caption", "score"]
    keys = scores["key"].to_pylist()
    assert keys == sorted(keys) and CORRUPT_KEY not in keys and TRUNCATED_KEY not in keys
    row = scores.slice(0, 1).to_pylist()[0]
    assert row["shard"] == "00000.tar" and row["url"] == f"http://127.0.0.1:1/{row['key']}.jpg"
    assert row["caption"] == f"caption of {row['key']}"
    values = scores["score"].to_numpy()
    threshold = manifest.metrics["score_threshold"]
    assert threshold == float(np.sort(values)[::-1][4])
    assert sorted(kept["key"].to_pylist()) == sorted(k for k, s in zip(keys, values) if s >= threshold)
    assert manifest.metrics["score_mean"] == pytest.approx(float(values.astype(np.float64).mean()))
    assert set(manifest.artifacts) == {"score_histogram.png", "score_summary.csv"}
    assert (out / "score_histogram.png").stat().st_size > 5000
    summary = dict(line.split(",") for line in (out / "score_summary.csv").read_text().splitlines()[1:])
    assert float(summary["images_kept"]) == 5 and float(summary["images_undecodable"]) == 2


def test_undecodable_images_are_recorded(two_runs):
    _, out = two_runs[0]
    bad = pq.read_table(out / "undecodable.parquet").to_pylist()
    assert [(r["key"], r["shard"]) for r in bad] == [(TRUNCATED_KEY, "00000.tar"), (CORRUPT_KEY, "00001.tar")]
    assert bad[1]["reason"] == "UnidentifiedImageError: not an image format PIL can read"
    assert "truncated" in bad[0]["reason"]


def test_scores_are_the_models_scores_of_the_stored_embeddings(two_runs, download_output):
    """Recompute in-process: the same seeded embedder and predictor give the stored embeddings and scores."""
    _, out = two_runs[0]
    scores = pq.read_table(out / "scores.parquet")
    embeddings = np.stack(scores["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    assert embeddings.shape == (10, 768)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    predictor = random_predictor("v2-mlp", seed=0)
    np.testing.assert_allclose(predict_scores(predictor, embeddings), scores["score"].to_numpy(), rtol=1e-5,
                               atol=1e-6)
    first_key = scores["key"][0].as_py()
    with tarfile.open(download_output.local_dir / "shards" / "00000.tar") as archive:
        jpeg = archive.extractfile(f"{first_key}.jpg").read()
    embedder = build_clip_embedder("tiny-random", seed=0)
    np.testing.assert_allclose(embedder.embed([Image.open(io.BytesIO(jpeg))])[0], embeddings[0], atol=1e-5)


def test_two_runs_are_bit_identical(two_runs):
    (_, first), (_, second) = two_runs
    for name in ("scores.parquet", "kept.parquet", "undecodable.parquet", "score_summary.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_choose_threshold_for_each_keep_mode():
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7], dtype=np.float32)
    assert choose_threshold(scores, "top_quantile", 5.0, 0.4) == pytest.approx(0.7)  # top 2 of 5
    assert choose_threshold(scores, "top_quantile", 5.0, 0.5) == pytest.approx(0.5)  # ceil(2.5) = top 3
    assert choose_threshold(scores, "top_quantile", 5.0, 1.0) == pytest.approx(0.1)  # the whole fraction
    assert choose_threshold(scores, "threshold", 5.0, 0.5) == 5.0
    assert choose_threshold(scores, "all", 5.0, 0.5) == float(np.float32(0.1))  # the lowest score: keeps every row


def test_keep_all_keeps_every_scored_image_and_records_their_scores(two_runs, tmp_path):
    _, out = two_runs[0]
    scores = pq.read_table(out / "scores.parquet")
    threshold = choose_threshold(scores["score"].to_numpy(), "all", 5.0, 0.5)
    kept = _write_kept(out / "scores.parquet", tmp_path / "kept.parquet", threshold)
    table = pq.read_table(tmp_path / "kept.parquet")
    assert kept == scores.num_rows and table["key"].to_pylist() == scores["key"].to_pylist()
    assert table["score"].to_pylist() == scores["score"].to_pylist()


def test_paper_keeps_every_image_and_the_5_cut_is_one_set_away():
    from vlv.config import load_config
    from vlv.config_tree import parse_set_flags

    paper = load_config("paper").aesthetic_filter
    assert paper.keep == "all" and paper.model == "pretrained"
    cut = load_config("paper", overrides=parse_set_flags(["aesthetic_filter.keep=threshold"])).aesthetic_filter
    assert cut.keep == "threshold" and cut.threshold == 5.0
    scores = np.array([4.9, 5.0, 6.2], dtype=np.float32)
    assert choose_threshold(scores, cut.keep, cut.threshold, cut.keep_top_quantile) == 5.0


def test_preflight_names_the_missing_predictor_file(tmp_path):
    step = AestheticFilterStep()
    config = AestheticFilterConfig(model="pretrained", predictor_weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="aesthetic_filter.predictor_weights.*sac\\+logos\\+ava1-l14-linearMSE"):
        step.preflight(config)
    with pytest.raises(ValueError, match="aesthetic_filter.predictor_weights is not set"):
        step.preflight(AestheticFilterConfig(model="pretrained"))
    step.preflight(TINY)  # nothing to check for random weights
    assert step.resources(TINY).num_cpus < 1


def test_an_absolute_threshold_keeps_exactly_the_rows_at_or_above_it(two_runs, tmp_path):
    _, out = two_runs[0]
    scores = pq.read_table(out / "scores.parquet")
    median = float(np.median(scores["score"].to_numpy()))
    kept = _write_kept(out / "scores.parquet", tmp_path / "kept.parquet", median)
    expected = [k for k, s in zip(scores["key"].to_pylist(), scores["score"].to_numpy()) if s >= np.float32(median)]
    assert kept == len(expected) and pq.read_table(tmp_path / "kept.parquet")["key"].to_pylist() == expected


def test_preflight_names_missing_clip_weights(tmp_path):
    weights = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save({k: torch.zeros(v.shape) for k, v in random_predictor("v2-mlp", 0).state_dict().items()}, weights)
    config = AestheticFilterConfig(model="pretrained", predictor_weights=str(weights), clip_cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="aesthetic_filter: CLIP weights for ViT-L-14 'openai' are not on this"):
        AestheticFilterStep().preflight(config)


def test_missing_or_empty_shard_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no shards folder"):
        _list_shards(str(tmp_path / "shards"))
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "00000.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="no \\*.tar shards"):
        _list_shards(str(tmp_path / "shards"))


def test_config_validation_names_fields():
    with pytest.raises(ValueError, match="aesthetic_filter.keep must be one of all, threshold, top_quantile"):
        AestheticFilterConfig(keep="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep_top_quantile must be in"):
        AestheticFilterConfig(keep="top_quantile", keep_top_quantile=1.5)
    with pytest.raises(ValueError, match="keep_top_quantile must be in"):
        AestheticFilterConfig(keep_top_quantile=0.0)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        AestheticFilterConfig(keep="threshold", threshold=float("nan"))
    with pytest.raises(ValueError, match="aesthetic_filter.model"):
        AestheticFilterConfig(model="clip")  # type: ignore[arg-type]
