"""prepare_metadata (tiny) then download, through the executor: real HTTP, real img2dataset, real shards.

Six photos plus five broken rows (two 404s, a truncated JPEG, an HTML page served as image/jpeg, an opted-out
photo) in shards of four. One download is shared by the inspection tests; the resume test runs one more, as a
Ray task (its own key, so it publishes its own output).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import shutil
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlv.data.download_stats import read_download_counts
from vlv.data.img2dataset_runner import Img2DatasetJob, run_img2dataset
from vlv.data.loopback_site import CANONICAL_BASE_URL, serve_folder
from vlv.engine.executor import execute_step, submit_step
from vlv.engine.step import Resources, StepOutput
from vlv.engine.store import RunStore
from vlv.ports import free_port
from vlv.steps.download import DownloadConfig, DownloadStep, img2dataset_job, split_metadata
from vlv.steps.prepare_metadata import PrepareMetadataConfig, PrepareMetadataStep
from vlv.testing.step_inputs import step_request

GOOD_PHOTOS = 6
BROKEN_ROWS = 5  # 2 x 404, truncated JPEG, HTML as image/jpeg, X-Robots-Tag: noai
# metadata_part_rows=8: img2dataset gets the 11 rows as two files (8 + 3 rows), as LAION-scale metadata would.
DOWNLOAD = DownloadConfig(image_size=32, samples_per_shard=4, processes_count=1, thread_count=4, timeout_s=5,
                          progress_interval_s=2.0, metadata_part_rows=8)
TINY_SOURCE = PrepareMetadataConfig(source="tiny", min_side=64, tiny_num_images=GOOD_PHOTOS, tiny_image_side=160)


def _download(store: Path, prepared: StepOutput, key: str, config: DownloadConfig = DOWNLOAD):
    manifest = execute_step(step_request(DownloadStep(), key, config, store, {"prepare_metadata": prepared}))
    return manifest, Path(RunStore(str(store)).output_uri("download", key))


def _member_names(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as archive:
        return sorted(archive.getnames())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, StepOutput]:
    store = tmp_path_factory.mktemp("store")
    config = TINY_SOURCE
    manifest = execute_step(step_request(PrepareMetadataStep(), "pm0", config, store, {}))
    output = StepOutput("prepare_metadata", "pm0", RunStore(str(store)).output_uri("prepare_metadata", "pm0"),
                        manifest)
    return store, output


@pytest.fixture(scope="module")
def downloaded(prepared):
    store, upstream = prepared
    return _download(store, upstream, "dl0")


def test_tiny_prepare_publishes_site_and_metadata(prepared):
    _, output = prepared
    folder = output.local_dir
    metadata = pq.read_table(folder / "metadata.parquet")
    assert metadata.num_rows == GOOD_PHOTOS + BROKEN_ROWS
    site = json.loads((folder / "loopback_site.json").read_text())
    assert site["base_url"] == CANONICAL_BASE_URL and "port" not in site
    assert all(u.startswith(f"{CANONICAL_BASE_URL}/") for u in metadata.column("URL").to_pylist())
    assert output.manifest.metrics["rows_kept"] == GOOD_PHOTOS + BROKEN_ROWS
    assert output.manifest.metrics["dropped_duplicate_url"] == 1 and output.manifest.metrics["dropped_too_small"] == 1
    assert len(list((folder / "loopback_site" / "photos").glob("0*.jpg"))) == GOOD_PHOTOS


def test_download_writes_shards_and_counts_failures_by_reason(downloaded, prepared):
    manifest, out = downloaded
    shards = out / "shards"
    assert sorted(p.name for p in shards.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert len(list(shards.glob("*_stats.json"))) == 3 and not (shards / "_tmp").exists()
    assert sorted(p.name for p in out.iterdir()) == ["download_counts.csv", "manifest.json", "shards"]
    metrics = manifest.metrics
    assert metrics["images_ok"] == GOOD_PHOTOS and metrics["images_failed"] == BROKEN_ROWS
    assert (metrics["images_failed_http_404"], metrics["images_failed_decode_error"],
            metrics["images_failed_opt_out"]) == (2, 2, 1)
    with open(out / "download_counts.csv") as handle:
        rows = {(r["status"], r["error_reason"]): int(r["count"]) for r in csv.DictReader(handle)}
    assert rows == {("success", ""): 6, ("failed_to_download", "http_404"): 2,
                    ("failed_to_resize", "decode_error"): 2, ("failed_to_download", "opt_out"): 1}
    assert manifest.artifacts == ("download_counts.csv",)


def test_shard_members_hold_resized_image_caption_and_metadata(downloaded, prepared):
    _, out = downloaded
    metadata = pq.read_table(prepared[1].local_dir / "metadata.parquet").to_pylist()
    caption_of = {row["URL"]: row["TEXT"] for row in metadata}
    samples = 0
    for tar_path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}
        for name in (n for n in members if n.endswith(".jpg")):
            key = name.removesuffix(".jpg")
            meta = json.loads(members[f"{key}.json"])
            assert meta["key"] == key and meta["status"] == "success"
            assert meta["url"].startswith(f"{CANONICAL_BASE_URL}/")  # as in the metadata, not as served
            assert members[f"{key}.txt"].decode() == caption_of[meta["url"]]
            assert {"WIDTH", "HEIGHT", "aesthetic", "pwatermark", "hash"} <= set(meta)
            assert Image.open(io.BytesIO(members[name])).size == (32, 32)
            samples += 1
    assert samples == GOOD_PHOTOS


def test_rerun_inside_a_ray_task_keeps_a_crashed_attempts_finished_shards(ray_session, downloaded, prepared):
    """Proofs with one more download: img2dataset's spawn pool works inside a Ray task; a rerun on the staging
    folder that a crashed attempt left (the engine keeps it: resumable) skips finished shards; metadata fed
    whole (here) or in parts (the first download) numbers shards the same."""
    store, upstream = prepared
    _, first = downloaded
    staging = RunStore(str(store)).prepare_staging("download", "dl-resume", keep_existing=True)
    (staging / "shards").mkdir()
    for name in ("00000.tar", "00000.parquet"):
        shutil.copy(first / "shards" / name, staging / "shards" / name)
    stats = json.loads((first / "shards" / "00000_stats.json").read_text())
    (staging / "shards" / "00000_stats.json").write_text(json.dumps({**stats, "marker": "from the crashed attempt"}))
    (staging / "shards" / "00001.tar").write_bytes(b"half a tar")  # unfinished: no stats file, so redone

    whole = dataclasses.replace(DOWNLOAD, metadata_part_rows=1_000_000)
    request = step_request(DownloadStep(), "dl-resume", whole, store, {"prepare_metadata": upstream})
    manifest = submit_step(request, Resources(num_cpus=1))
    out = Path(RunStore(str(store)).output_uri("download", "dl-resume"))
    kept = json.loads((out / "shards" / "00000_stats.json").read_text())
    assert kept["marker"] == "from the crashed attempt"  # not downloaded again
    assert (out / "shards" / "00000.tar").read_bytes() == (first / "shards" / "00000.tar").read_bytes()
    assert _member_names(out / "shards" / "00001.tar") == _member_names(first / "shards" / "00001.tar")
    assert sorted(p.name for p in (out / "shards").glob("*_stats.json")) == [
        "00000_stats.json", "00001_stats.json", "00002_stats.json"]
    assert manifest.metrics["images_ok"] == GOOD_PHOTOS and manifest.metrics["images_failed"] == BROKEN_ROWS


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def test_two_sites_on_different_ports_give_identical_outputs(prepared, downloaded, tmp_path, monkeypatch):
    """The port the tiny site is served on reaches neither the metadata nor the shards (their `url` fields
    hold the canonical URLs): a second prepare + download on other ports publishes the same bytes."""
    store, first_prepared = prepared
    _, first = downloaded
    ports = [free_port(), free_port()]
    config = dataclasses.replace(TINY_SOURCE, tiny_port=ports[0])
    manifest = execute_step(step_request(PrepareMetadataStep(), "pm-port", config, tmp_path, {}))
    again = StepOutput("prepare_metadata", "pm-port", RunStore(str(tmp_path)).output_uri("prepare_metadata",
                                                                                          "pm-port"), manifest)
    assert _digests(again.local_dir) == _digests(first_prepared.local_dir)

    served_on: list[int] = []

    @contextlib.contextmanager
    def serve_on_the_second_port(folder, host="127.0.0.1", port=0):
        with serve_folder(folder, host, ports[1]) as server:
            served_on.append(server.port)
            yield server

    monkeypatch.setattr("vlv.steps.download.serve_folder", serve_on_the_second_port)
    _, second = _download(tmp_path, again, "dl-port")
    assert served_on == [ports[1]] and len(set(ports)) == 2
    assert _digests(second) == _digests(first)
    shard_urls = pq.read_table(second / "shards" / "00000.parquet").column("url").to_pylist()
    assert shard_urls and all(u.startswith(f"{CANONICAL_BASE_URL}/") for u in shard_urls)


def test_shards_img2dataset_gave_up_on_block_publishing(prepared, monkeypatch):
    store, upstream = prepared
    monkeypatch.setattr("vlv.steps.download.run_img2dataset", lambda job: None)  # every shard "failed"
    with pytest.raises(RuntimeError, match="only 0 of 3 shards.*rerun"):
        _download(store, upstream, "dl-gave-up")
    assert not RunStore(str(store)).is_published("download", "dl-gave-up")


def test_opt_out_and_resume_settings_reach_img2dataset():
    columns = ["URL", "TEXT", "WIDTH", "aesthetic", "not_laion"]
    job = img2dataset_job(DOWNLOAD, "m.parquet", "shards", "multiprocessing", columns)
    kwargs = job.download_kwargs()
    assert kwargs["disallowed_header_directives"] is None  # None = img2dataset's default opt-out directives
    assert kwargs["incremental_mode"] == "incremental" and kwargs["output_format"] == "webdataset"
    assert (kwargs["url_col"], kwargs["caption_col"], kwargs["image_size"]) == ("URL", "TEXT", 32)
    assert kwargs["save_additional_columns"] == ["WIDTH", "aesthetic"]
    opted_in = img2dataset_job(dataclasses.replace(DOWNLOAD, respect_opt_out=False), "m", "s", "ray")
    assert opted_in.download_kwargs()["disallowed_header_directives"] == []


@pytest.mark.parametrize(("part_rows", "expected"), [(8, [8, 3]), (6, [4, 4, 3]), (11, None), (100, None)])
def test_long_metadata_is_fed_in_parts_of_whole_shards(prepared, tmp_path, part_rows, expected):
    _, upstream = prepared
    config = dataclasses.replace(DOWNLOAD, metadata_part_rows=part_rows)
    ctx = SimpleNamespace(log=logging.getLogger("test"))
    url_list = split_metadata(upstream, 11, config, tmp_path / "parts", ctx)
    if expected is None:
        assert url_list == upstream.path("metadata.parquet") and not (tmp_path / "parts").exists()
        return
    parts = sorted((tmp_path / "parts").glob("*.parquet"))
    assert url_list == str(tmp_path / "parts") and [pq.read_metadata(p).num_rows for p in parts] == expected
    whole = pq.read_table(upstream.path("metadata.parquet"))
    assert pq.read_table(parts[0]).equals(whole.slice(0, expected[0]))


@pytest.mark.slow
def test_img2dataset_in_a_child_process(prepared, tmp_path):
    """The path taken off the main thread: `python -m vlv.data.img2dataset_runner`."""
    _, upstream = prepared
    job = Img2DatasetJob(url_list=upstream.path("metadata.parquet"), output_folder=str(tmp_path / "shards"),
                         image_size=32, resize_mode="center_crop", encode_format="jpg", encode_quality=90,
                         number_sample_per_shard=4, processes_count=1, thread_count=4, timeout=5, retries=0,
                         distributor="multiprocessing", save_additional_columns=("aesthetic",))
    with serve_folder(upstream.local_dir / "loopback_site") as server:
        served = split_metadata(upstream, 11, DOWNLOAD, tmp_path / "parts", SimpleNamespace(log=logging.getLogger()),
                                url_rewrite=server.served_urls())
        run_img2dataset(dataclasses.replace(job, url_list=served), in_subprocess=True)
    counts = read_download_counts(tmp_path / "shards")
    assert (counts.images_ok, counts.images_failed) == (GOOD_PHOTOS, BROKEN_ROWS)
