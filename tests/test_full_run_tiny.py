"""End to end: the whole tiny pipeline through the CLI, once per session, inspected by many tests.

One pipeline run (session fixture `tiny_store` in conftest) is inspected by many tests; then a second invocation
must execute nothing and `--force download` exactly one step.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from pipelines import full_run
from vlv.engine.manifest import verify_files
from vlv.engine.store import RunStore
from vlv.pipeline import step_names
from vlv.testing.builders import published_outputs

DATA_STEPS = ["prepare_metadata", "download", "aesthetic_filter", "ingest_captions"]
ALL_STEPS = step_names()


def _outputs(store: Path) -> dict[str, Path]:
    return published_outputs(store, ALL_STEPS)


def _runs(store: Path) -> list:
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vlv")
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_every_output_is_published_and_intact(tiny_store):
    store = RunStore(str(tiny_store))
    for step, folder in _outputs(tiny_store).items():
        manifest = store.read_manifest(step, folder.name)
        assert manifest.files, step
        assert verify_files(folder, manifest) == [], step
    assert not any((tiny_store / ".staging").rglob("*.tar"))


def test_data_funnel_counts_are_consistent(tiny_store):
    out = _outputs(tiny_store)
    metadata = pq.read_table(out["prepare_metadata"] / "metadata.parquet")
    shards = sorted((out["download"] / "shards").glob("*.tar"))
    scores = pq.read_table(out["aesthetic_filter"] / "scores.parquet")
    kept = pq.read_table(out["aesthetic_filter"] / "kept.parquet")
    captions = pq.read_table(out["ingest_captions"] / "captions.parquet")
    quarantine = pq.read_table(out["ingest_captions"] / "quarantine.parquet")
    assert metadata.num_rows > 0 and shards
    assert 0 < kept.num_rows < scores.num_rows <= metadata.num_rows
    assert 0 < captions.num_rows <= kept.num_rows
    assert set(captions.column("key").to_pylist()) <= set(kept.column("key").to_pylist())
    assert quarantine.num_rows > 0  # the tiny caption file always carries faulty lines
    assert min(len(c) for c in captions.column("caption").to_pylist()) > 0


def test_mlflow_has_parent_and_one_child_per_step(tiny_store):
    runs = _runs(tiny_store)
    parents = [r for r in runs if r.data.tags.get("vlv.pipeline") == "full_run"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.data.tags["vlv.step"] for r in children} == set(ALL_STEPS)
    by_step = {r.data.tags["vlv.step"]: r for r in children}
    assert {r.data.tags["vlv.status"] for r in children} == {"executed"}
    assert by_step["download"].data.metrics["images_ok"] > 0
    assert by_step["download"].data.metrics["images_failed"] > 0  # 404s, truncated JPEG, non-image
    assert by_step["aesthetic_filter"].data.metrics["images_kept"] > 0
    assert by_step["ingest_captions"].data.metrics["captions_quarantined"] > 0
    assert by_step["download"].data.params["image_size"] == "64"
    for key in ("vlv.preset", "vlv.config_hash", "vlv.git_commit"):
        assert parents[0].data.tags[key]
    assert parents[0].info.run_name == "tiny: all steps, 11 ran, 0 cached"
    client = MlflowClient(f"sqlite:///{tiny_store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("vlv")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the training view, not GenAI
    # Lineage: each step's inputs are MLflow datasets with content digests.
    stage1_inputs = client.get_run(by_step["train_stage1"].info.run_id).inputs.dataset_inputs
    inputs = {d.dataset.name: d.dataset for d in stage1_inputs}
    assert {"download/shards", "aesthetic_filter/kept.parquet"} <= set(inputs), set(inputs)
    assert len(inputs["download/shards"].digest) == 16
    # The trained captioner is in the model registry, pointing at the run that trained it.
    assert by_step["train_stage2"].data.tags["vlv.registered_model"] == "vlv-captioner/1"
    version = client.get_model_version("vlv-captioner", "1")
    assert version.run_id == by_step["train_stage2"].info.run_id
    # System metrics of the steps that work hard.
    assert any(m.startswith("system/cpu_utilization") for m in by_step["aesthetic_filter"].data.metrics)


def test_training_steps_lower_the_loss_and_log_by_step(tiny_store):
    from vlv.tracking import metric_history

    runs = {r.data.tags.get("vlv.step"): r for r in _runs(tiny_store) if r.data.tags.get("vlv.status") == "executed"}
    for step in ("train_stage1", "train_stage2"):
        losses = metric_history(f"sqlite:///{tiny_store / 'mlflow.db'}", runs[step].info.run_id, "loss")
        assert [s for s, _ in losses] == list(range(1, len(losses) + 1))  # every step once, no gap
        assert losses[-1][1] < losses[0][1], f"{step}: loss did not fall: {losses}"
        assert runs[step].data.metrics["samples_per_s"] > 0


def test_trained_captioner_captions_a_real_photo(tiny_store, tmp_path):
    import skimage.data
    from PIL import Image

    from vlv.inference import caption_images

    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage.data.astronaut()).save(photo)
    folder = _outputs(tiny_store)["train_stage2"]
    captions = caption_images([photo], folder, max_new_tokens=8, num_beams=2)
    assert len(captions) == 1 and isinstance(captions[0], str) and captions[0].strip()
    grid = _outputs(tiny_store)["train_stage1"] / "reconstruction_grid.png"
    assert Image.open(grid).size[1] == 2 * 64 + 2 * 2  # two rows: originals, reconstructions


def test_second_invocation_executes_nothing_and_force_runs_exactly_one(tiny_store, capsys):
    before = len(_runs(tiny_store))
    capsys.readouterr()
    assert full_run.main(["--preset", "tiny", "--store", str(tiny_store)]) == 0
    printed = capsys.readouterr().out
    assert [line.split()[1] for line in printed.splitlines()[1:len(ALL_STEPS) + 1]] == ["cached"] * len(ALL_STEPS)
    assert len(_runs(tiny_store)) == before  # nothing ran: no MLflow run was opened
    assert full_run.main(["--preset", "tiny", "--store", str(tiny_store), "--force", "download"]) == 0
    latest = _runs(tiny_store)[-len(ALL_STEPS):]
    statuses = {r.data.tags["vlv.step"]: r.data.tags["vlv.status"] for r in latest}
    assert statuses == {name: "executed" if name == "download" else "cached" for name in ALL_STEPS}
    parent = [r for r in _runs(tiny_store) if r.data.tags.get("vlv.pipeline") == "full_run"][-1]
    assert parent.info.run_name == "tiny: force download, 1 ran, 10 cached"
    assert parent.data.metrics["images_kept"] > 0 and parent.data.metrics["stage2_final_loss"] > 0
    assert "fid" in parent.data.metrics and "vqa_accuracy" in parent.data.metrics
    capsys.readouterr()
    assert full_run.main(["--preset", "tiny", "--store", str(tiny_store), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("cached") == len(ALL_STEPS)


def test_forcing_a_training_step_trains_afresh_with_a_whole_curve(tiny_store, caplog):
    """A forced rerun never "resumes" the finished run left in scratch: it trains every step again, and its
    MLflow run holds the whole loss curve (downstream steps keep their keys, so they stay cached)."""
    import logging

    from vlv.tracking import metric_history

    with caplog.at_level(logging.INFO):
        assert full_run.main(["--preset", "tiny", "--store", str(tiny_store), "--force", "train_stage1"]) == 0
    latest = {r.data.tags["vlv.step"]: r for r in _runs(tiny_store)[-len(ALL_STEPS):]}
    assert latest["train_stage1"].data.tags["vlv.status"] == "executed"
    assert {latest[s].data.tags["vlv.status"] for s in ALL_STEPS if s != "train_stage1"} == {"cached"}
    losses = metric_history(f"sqlite:///{tiny_store / 'mlflow.db'}", latest["train_stage1"].info.run_id, "loss")
    assert [step for step, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert "resumed_from_step" not in latest["train_stage1"].data.metrics
