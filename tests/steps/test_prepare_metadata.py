"""The prepare_metadata step: preflight, the laion source through the executor, config overrides."""

from __future__ import annotations

import csv
import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlv.config import load_config
from vlv.data.laion import MetadataFilter
from vlv.engine.plan import make_plan
from vlv.engine.store import RunStore
from vlv.pipeline import pipeline_steps
from vlv.steps.prepare_metadata import PrepareMetadataConfig, PrepareMetadataStep
from vlv.testing.step_inputs import run_prepare_metadata


def test_preflight_names_the_missing_input_uri(tmp_path):
    step = PrepareMetadataStep()
    with pytest.raises(ValueError, match="prepare_metadata.input_uri is empty"):
        step.preflight(PrepareMetadataConfig(source="laion", input_uri=""))
    with pytest.raises(ValueError, match="prepare_metadata.input_uri: nothing found"):
        step.preflight(PrepareMetadataConfig(source="laion", input_uri=str(tmp_path / "none-*.parquet")))
    step.preflight(PrepareMetadataConfig(source="tiny"))  # nothing to check
    step.preflight(PrepareMetadataConfig(source="laion", input_uri="s3://bucket/laion/*.parquet"))  # not probed


def test_laion_source_publishes_metadata_funnel_and_metrics(tmp_path):
    source = tmp_path / "laion" / "part-0.parquet"
    source.parent.mkdir()
    pq.write_table(pa.table({
        "url": ["http://a.example/1.jpg", "http://a.example/2.jpg", "ftp://a.example/3.jpg", "http://a.example/1.jpg"],
        "caption": ["one", "two", "three", "one again"],
        "width": [1024, 300, 1024, 1024], "height": [768, 300, 768, 768],
        "prob_watermark": [0.1, 0.1, 0.1, 0.1],
    }), source)
    config = PrepareMetadataConfig(source="laion", input_uri=str(source.parent))
    manifest, out = run_prepare_metadata(tmp_path / "store", config)
    table = pq.read_table(out / "metadata.parquet")
    assert table.column_names == ["URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark",
                                  "aesthetic"]
    assert table.column("TEXT").to_pylist() == ["one"]
    with open(out / "funnel.csv") as handle:
        funnel = {row["stage"]: int(row["count"]) for row in csv.DictReader(handle)}
    assert funnel["rows_read"] == 4 and funnel["rows_kept"] == 1
    assert (funnel["dropped_invalid_url"], funnel["dropped_too_small"], funnel["dropped_duplicate_url"]) == (1, 1, 1)
    assert manifest.metrics["rows_read"] == 4 and manifest.metrics["dropped_duplicate_url"] == 1
    assert manifest.artifacts == ("funnel.csv",)
    assert not (out / "loopback_site.json").exists()


def test_the_default_thresholds_are_the_papers_pre_filter():
    """paper_mini builds its photo site against `MetadataFilter()`: the step's defaults must be that filter."""
    assert PrepareMetadataConfig().metadata_filter() == MetadataFilter(min_side=512, min_aspect=0.5, max_aspect=2.0,
                                                                       max_pwatermark=0.5, max_punsafe=None)
    assert MetadataFilter() == PrepareMetadataConfig().metadata_filter()


def test_column_map_and_thresholds_from_the_command_line():
    config = load_config("paper", overrides={"prepare_metadata.column_map": '{"URL": "link", "TEXT": "alt"}',
                                             "prepare_metadata.max_pwatermark": "none"})
    assert config.prepare_metadata.column_map == {"URL": "link", "TEXT": "alt"}
    assert config.prepare_metadata.metadata_filter().required_columns() == ("URL", "WIDTH", "HEIGHT")
    with pytest.raises(ValueError, match="column_map keys must be our column names"):
        load_config("paper", overrides={"prepare_metadata.column_map": '{"url": "link"}'})


def test_the_tiny_sites_port_is_in_no_step_key(tmp_path):
    store = RunStore(str(tmp_path / "store"))
    default = make_plan(pipeline_steps(), load_config("tiny"), store)
    pinned = load_config("tiny", overrides={"prepare_metadata.tiny_port": "30123"})
    assert pinned.prepare_metadata.tiny_port == 30123
    assert [p.key for p in make_plan(pipeline_steps(), pinned, store)] == [p.key for p in default]
    assert pinned.config_hash() == load_config("tiny").config_hash()
    other_photos = load_config("tiny", overrides={"prepare_metadata.tiny_num_images": "5"})
    changed = make_plan(pipeline_steps(), other_photos, store)
    assert all(a.key != b.key for a, b in zip(changed, default))  # a setting the data depends on still counts


@pytest.mark.parametrize("port", ["10002", "10011", "18765", "19999"])
def test_a_port_in_rays_worker_range_is_refused_with_the_reason(tmp_path, capsys, port):
    with pytest.raises(ValueError, match=f"prepare_metadata.tiny_port={port} lies in Ray's worker port range "
                                         f"10002-19999: Ray hands those ports to its worker processes"):
        load_config("tiny", overrides={"prepare_metadata.tiny_port": port})
    from pipelines import full_run

    assert full_run.main(["--dry-run", "--store", str(tmp_path), "--set", f"prepare_metadata.tiny_port={port}"]) == 2
    assert "or 0 (any free port)" in capsys.readouterr().err
    for allowed in ("0", "10001", "20000"):
        assert load_config("tiny", overrides={"prepare_metadata.tiny_port": allowed}).prepare_metadata.tiny_port \
            == int(allowed)


def test_laion_source_with_a_served_folder_publishes_it_for_the_download(tmp_path):
    site = tmp_path / "site"
    (site / "photos").mkdir(parents=True)
    (site / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    source = tmp_path / "laion.parquet"
    pq.write_table(pa.table({"URL": ["http://tiny-site.invalid/photos/a.jpg", "http://other.example/b.jpg"],
                             "TEXT": ["a", "b"], "WIDTH": [1024, 1024], "HEIGHT": [768, 768],
                             "pwatermark": [0.1, 0.1]}), source)
    config = PrepareMetadataConfig(source="laion", input_uri=str(source), serve_folder=str(site))
    PrepareMetadataStep().preflight(config)
    _, out = run_prepare_metadata(tmp_path / "store", config)
    assert (out / "loopback_site" / "photos" / "a.jpg").read_bytes() == b"\xff\xd8 not really a jpeg"
    assert json.loads((out / "loopback_site.json").read_text()) == {"base_url": "http://tiny-site.invalid",
                                                                   "folder": "loopback_site"}
    elsewhere = tmp_path / "elsewhere.parquet"
    pq.write_table(pa.table({"URL": ["http://127.0.0.1:28999/photos/a.jpg"], "TEXT": ["a"], "WIDTH": [1024],
                             "HEIGHT": [768], "pwatermark": [0.1]}), elsewhere)
    with pytest.raises(ValueError, match="no kept URL starts with http://tiny-site.invalid/"):
        run_prepare_metadata(tmp_path / "store2", dataclasses.replace(config, input_uri=str(elsewhere)))


def test_served_folder_settings_are_checked():
    with pytest.raises(ValueError, match="serve_folder is for source='laion'"):
        PrepareMetadataConfig(source="tiny", serve_folder="/data/site")
    with pytest.raises(ValueError, match="serve_folder='/no/such/site' is not a folder"):
        PrepareMetadataStep().preflight(PrepareMetadataConfig(source="laion", input_uri="s3://bucket/x.parquet",
                                                              serve_folder="/no/such/site"))


def test_the_task_split_settings_are_checked_and_kept_out_of_the_step_key(tmp_path):
    for field_name, bad in (("num_tasks", 0), ("cpus_per_task", 0.0), ("dedup_partitions", 0)):
        with pytest.raises(ValueError, match=f"prepare_metadata.{field_name} must be"):
            PrepareMetadataConfig(**{field_name: bad})
    store = RunStore(str(tmp_path / "store"))
    default = make_plan(pipeline_steps(), load_config("tiny"), store)
    split = load_config("tiny", overrides={"prepare_metadata.num_tasks": "8", "prepare_metadata.cpus_per_task": "2",
                                           "prepare_metadata.dedup_partitions": "256"})
    assert [p.key for p in make_plan(pipeline_steps(), split, store)] == [p.key for p in default]
    step = PrepareMetadataStep()
    assert step.resources(split.prepare_metadata).num_cpus == 0.5
    assert [(p.kind, p.count, p.cpus) for p in step.worker_pools(PrepareMetadataConfig(num_tasks=8))] == [
        ("tasks", 8, 0.75)]
    assert step.worker_pools(split.prepare_metadata) == ()  # the tiny source runs in the step's own task


def test_files_split_over_ray_tasks_publish_one_metadata_file_without_the_work_folder(tmp_path, ray_session):
    folder = tmp_path / "laion"
    folder.mkdir()
    for part, urls in enumerate((["http://a.example/1.jpg", "http://a.example/2.jpg"],
                                 ["http://a.example/2.jpg", "http://a.example/3.jpg"])):
        pq.write_table(pa.table({"URL": urls, "TEXT": [f"part {part}"] * 2, "WIDTH": [1024, 1024],
                                 "HEIGHT": [768, 768], "pwatermark": [0.1, 0.1]}), folder / f"part-{part}.parquet")
    config = PrepareMetadataConfig(source="laion", input_uri=str(folder), num_tasks=2, cpus_per_task=0.5)
    manifest, out = run_prepare_metadata(tmp_path / "store", config)
    table = pq.read_table(out / "metadata.parquet")
    assert table.column("URL").to_pylist() == ["http://a.example/1.jpg", "http://a.example/2.jpg",
                                               "http://a.example/3.jpg"]
    assert table.column("TEXT").to_pylist() == ["part 0", "part 0", "part 1"]
    assert manifest.metrics["dropped_duplicate_url"] == 1
    assert sorted(entry.path for entry in manifest.files) == ["funnel.csv", "metadata.parquet"]
