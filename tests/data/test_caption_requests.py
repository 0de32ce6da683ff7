"""`vlv captions request`: Gemini Batch API request lines for the kept images, from published outputs."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlv.batch_requests import write_caption_requests_for_run
from vlv.cli import main
from vlv.data.caption_requests import CAPTION_PROMPT
from vlv.engine.manifest import Manifest, list_files
from vlv.presets import tiny
from vlv.run import RunOptions, plan_run

IMAGES = {f"00000000{i}": bytes([0xFF, 0xD8, 0xFF, i]) + b"jpeg-bytes" * (i + 1) for i in range(4)}


def _publish(store, planned, write) -> None:
    staging = store.prepare_staging(planned.name, planned.key, keep_existing=False)
    write(staging)
    store.publish(staging, Manifest(step=planned.name, key=planned.key, code_version="1", config={},
                                    upstream=planned.upstream_keys, files=list_files(staging), metrics={}))


def _write_shards(folder: Path) -> None:
    (folder / "shards").mkdir()
    with tarfile.open(folder / "shards" / "00000.tar", "w") as tar:
        for key, image in IMAGES.items():
            for ext, payload in ((".jpg", image), (".txt", b"a caption"), (".json", b"{}")):
                info = tarfile.TarInfo(key + ext)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def _write_kept(folder: Path) -> None:
    kept = ["000000003", "000000001"]  # the filter kept two of the four images
    pq.write_table(pa.table({"key": kept, "shard": ["00000.tar"] * 2, "url": ["u3", "u1"], "caption": ["c3", "c1"],
                             "score": pa.array([6.0, 5.5], pa.float32())}), folder / "kept.parquet")


@pytest.fixture
def options(tmp_path) -> RunOptions:
    return RunOptions(config=tiny(), store_uri=str(tmp_path / "store"))


def test_requests_for_kept_images(tmp_path, options):
    store, plan = plan_run(options)
    steps = {p.name: p for p in plan}
    _publish(store, steps["download"], _write_shards)
    _publish(store, steps["aesthetic_filter"], _write_kept)
    output = tmp_path / "out" / "requests.jsonl"

    assert write_caption_requests_for_run(options, str(output)) == 2
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["key"] for line in lines] == ["000000001", "000000003"]
    for line in lines:
        (content,) = line["request"]["contents"]
        assert content["role"] == "user"
        text, image = content["parts"]
        assert text == {"text": CAPTION_PROMPT}
        assert image["inline_data"]["mime_type"] == "image/jpeg"
        assert base64.b64decode(image["inline_data"]["data"]) == IMAGES[line["key"]]
        assert line["request"]["generationConfig"]["maxOutputTokens"] > 227
    assert not list(output.parent.glob("*.partial"))


def test_missing_upstream_names_the_command(tmp_path, options):
    with pytest.raises(ValueError, match="no published download output.*pipelines/full_run.py --preset tiny --steps"):
        write_caption_requests_for_run(options, str(tmp_path / "requests.jsonl"))


def test_cli(tmp_path, options, capsys):
    store, plan = plan_run(options)
    steps = {p.name: p for p in plan}
    _publish(store, steps["download"], _write_shards)
    assert main(["captions", "request", "--store", options.store_uri, "--output", str(tmp_path / "r.jsonl")]) == 2
    assert "no published aesthetic_filter output" in capsys.readouterr().err
    _publish(store, steps["aesthetic_filter"], _write_kept)
    assert main(["captions", "request", "--store", options.store_uri, "--output", str(tmp_path / "r.jsonl")]) == 0
    assert "wrote 2 Gemini batch requests" in capsys.readouterr().out


def test_kept_image_missing_from_its_shard(tmp_path, options):
    store, plan = plan_run(options)
    steps = {p.name: p for p in plan}
    _publish(store, steps["download"], _write_shards)

    def kept_with_a_stranger(folder: Path) -> None:
        pq.write_table(pa.table({"key": ["000000001", "000000009"], "shard": ["00000.tar"] * 2}),
                       folder / "kept.parquet")

    _publish(store, steps["aesthetic_filter"], kept_with_a_stranger)
    output = tmp_path / "requests.jsonl"
    with pytest.raises(ValueError, match="1 kept image.*not found in shard 00000.tar.*000000009"):
        write_caption_requests_for_run(options, str(output))
    assert not output.exists() and not list(tmp_path.glob("*.partial"))


def test_cli_prompt_file_replaces_the_default_prompt(tmp_path, options, capsys):
    store, plan = plan_run(options)
    steps = {p.name: p for p in plan}
    _publish(store, steps["download"], _write_shards)
    _publish(store, steps["aesthetic_filter"], _write_kept)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("Describe the image in one detailed paragraph.\n", encoding="utf-8")
    output = tmp_path / "r.jsonl"
    assert main(["captions", "request", "--store", options.store_uri, "--output", str(output),
                 "--prompt-file", str(prompt_file)]) == 0
    texts = {json.loads(line)["request"]["contents"][0]["parts"][0]["text"] for line in output.read_text().splitlines()}
    assert texts == {"Describe the image in one detailed paragraph."}
    assert main(["captions", "request", "--store", options.store_uri, "--output", str(output),
                 "--prompt-file", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert "--prompt-file" in err and "missing.txt does not exist" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="captioning prompt is empty"):
        write_caption_requests_for_run(options, str(output), prompt=empty.read_text().strip())
