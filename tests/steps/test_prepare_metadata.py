"""The prepare_metadata step: preflight, the laion source through the executor, config overrides."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlv.config import load_config
from vlv.engine.executor import StepRequest, execute_step
from vlv.engine.store import RunStore
from vlv.steps.prepare_metadata import PrepareMetadataConfig, PrepareMetadataStep


def _execute(store: Path, config: PrepareMetadataConfig, key: str = "pm0"):
    request = StepRequest(step=PrepareMetadataStep(), key=key, preset="paper", section=config,
                          section_dict=dataclasses.asdict(config), upstream_keys={}, inputs={},
                          store_uri=str(store), tracking_uri=None, mlflow_run_id=None, on_cluster=False)
    return execute_step(request), Path(RunStore(str(store)).output_uri("prepare_metadata", key))


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
    manifest, out = _execute(tmp_path / "store", config)
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


def test_column_map_and_thresholds_from_the_command_line():
    config = load_config("paper", overrides={"prepare_metadata.column_map": '{"URL": "link", "TEXT": "alt"}',
                                             "prepare_metadata.max_pwatermark": "none"})
    assert config.prepare_metadata.column_map == {"URL": "link", "TEXT": "alt"}
    assert config.prepare_metadata.metadata_filter().required_columns() == ("URL", "WIDTH", "HEIGHT")
    with pytest.raises(ValueError, match="column_map keys must be our column names"):
        load_config("paper", overrides={"prepare_metadata.column_map": '{"url": "link"}'})


def test_laion_source_with_a_served_folder_publishes_it_for_the_download(tmp_path):
    site = tmp_path / "site"
    (site / "photos").mkdir(parents=True)
    (site / "photos" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    source = tmp_path / "laion.parquet"
    pq.write_table(pa.table({"URL": ["http://127.0.0.1:28999/photos/a.jpg", "http://other.example/b.jpg"],
                             "TEXT": ["a", "b"], "WIDTH": [1024, 1024], "HEIGHT": [768, 768],
                             "pwatermark": [0.1, 0.1]}), source)
    config = PrepareMetadataConfig(source="laion", input_uri=str(source), serve_folder=str(site), serve_port=28999)
    PrepareMetadataStep().preflight(config)
    _, out = _execute(tmp_path / "store", config)
    assert (out / "loopback_site" / "photos" / "a.jpg").read_bytes() == b"\xff\xd8 not really a jpeg"
    assert json.loads((out / "loopback_site.json").read_text()) == {"host": "127.0.0.1", "port": 28999,
                                                                   "folder": "loopback_site"}
    wrong_port = dataclasses.replace(config, serve_port=28998)
    with pytest.raises(ValueError, match="no kept URL starts with http://127.0.0.1:28998/"):
        _execute(tmp_path / "store2", wrong_port)


def test_served_folder_settings_are_checked():
    with pytest.raises(ValueError, match="serve_folder is for source='laion'"):
        PrepareMetadataConfig(source="tiny", serve_folder="/data/site", serve_port=28999)
    with pytest.raises(ValueError, match="serve_port must be in 1..65535 when serve_folder is set"):
        PrepareMetadataConfig(source="laion", serve_folder="/data/site")
    with pytest.raises(ValueError, match="serve_folder='/no/such/site' is not a folder"):
        PrepareMetadataStep().preflight(PrepareMetadataConfig(source="laion", input_uri="s3://bucket/x.parquet",
                                                              serve_folder="/no/such/site", serve_port=28999))
