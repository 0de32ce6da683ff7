"""The failure catalogue: every bad input the pipeline must survive, with its expected outcome, checked for real.

Each `Case` names an input and what must happen to it: a clear error naming the problem and the fix, or a
quarantine / failed record carrying the reason, while the good rows given alongside survive. Its check runs the
real code path (prepare_metadata, img2dataset through the download step, the aesthetic filter's decoder,
ingest_captions, config loading and preflight, the store and evaluation readers). README.md's "Failure modes"
section is generated from `CASES`:

    python -m tests.test_failure_catalogue --write-readme
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import tarfile
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlv.data.caption_synthetic import blocked_line, error_line, response_line
from vlv.data.loopback_site import NOT_A_PHOTO, PHOTO_SOURCES, make_photo, serve_folder, truncate_jpeg
from vlv.engine.executor import execute_step
from vlv.engine.step import StepOutput
from vlv.engine.store import RunStore
from vlv.ports import free_port
from vlv.steps.download import DownloadConfig, DownloadStep
from vlv.steps.ingest_captions import IngestCaptionsConfig
from vlv.steps.prepare_metadata import PrepareMetadataConfig
from vlv.testing.step_inputs import (
    KEPT_KEYS,
    fake_caption_eval,
    laion_row,
    run_ingest_captions,
    run_prepare_metadata,
    step_request,
    write_parquet,
)

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- failure-modes:start -->", "<!-- failure-modes:end -->"
REGENERATE = "python -m tests.test_failure_catalogue --write-readme"


@dataclass
class Env:
    """What a check gets: its own temporary folder, and the shared fixtures on demand."""

    tmp_path: Path
    request: pytest.FixtureRequest

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)


@dataclass(frozen=True)
class Case:
    category: str
    name: str
    given: str  # what the input is
    outcome: str  # what must happen, in words
    check: Callable[[Env], None]


def expect_error(action: Callable[[], object], *fragments: str) -> str:
    """The action raises a ValueError whose message holds every fragment (the problem and the fix)."""
    with pytest.raises(ValueError) as info:
        action()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the error: {message}"
    return message


# -- LAION metadata: through the prepare_metadata step ------------------------------------------------------

GOOD_URLS = [f"http://good.example/{i}.jpg" for i in range(3)]


def _good_rows() -> list[dict]:
    return [laion_row(url=url, text=f"good photo {i}") for i, url in enumerate(GOOD_URLS)]


def _prepare(env: Env, rows: list[dict] | None = None, *, path: Path | None = None, schema: pa.Schema | None = None,
             **config) -> tuple[dict[str, float], pa.Table]:
    """prepare_metadata (source laion) on `rows` (or the file at `path`): its metrics and metadata.parquet."""
    if path is None:
        path = Path(write_parquet(env.tmp_path / "laion.parquet", rows, schema))
    step_config = PrepareMetadataConfig(source="laion", input_uri=str(path), **config)
    manifest, out = run_prepare_metadata(env.tmp_path / "store", step_config)
    return manifest.metrics, pq.read_table(out / "metadata.parquet")


def _assert_dropped(env: Env, bad_rows: list[dict], reason: str, schema: pa.Schema | None = None,
                    good: list[dict] | None = None) -> pa.Table:
    """Good rows first and last, bad rows between: every bad row dropped with `reason`, every good row kept."""
    good = good or _good_rows()
    metrics, table = _prepare(env, good[:2] + bad_rows + good[2:], schema=schema)
    assert metrics[f"dropped_{reason}"] == len(bad_rows), metrics
    assert metrics["rows_kept"] == len(good) and table.column("URL").to_pylist() == GOOD_URLS
    return table


def laion_missing_column(env: Env) -> None:
    path = write_parquet(env.tmp_path / "no_watermark.parquet",
                         [{k: v for k, v in row.items() if k != "pwatermark"} for row in _good_rows()])
    expect_error(lambda: _prepare(env, path=Path(path)), "no column for pwatermark", "columns found: URL, TEXT",
                 "--set prepare_metadata.column_map=")


def laion_renamed_columns(env: Env) -> None:
    rows = [{"url": url, "caption": f"good photo {i}", "width": 900, "height": 700, "prob_watermark": 0.2,
             "NSFW": "UNLIKELY", "AESTHETIC_SCORE": 6.0} for i, url in enumerate(GOOD_URLS)]
    metrics, table = _prepare(env, rows, max_punsafe=0.5)
    assert metrics["rows_kept"] == 3 and table.column("URL").to_pylist() == GOOD_URLS
    assert table.column("TEXT").to_pylist()[0] == "good photo 0" and table.column("punsafe").to_pylist()[0] == 0.0


def laion_wrong_scalar_types(env: Env) -> None:
    schema = pa.schema([("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.string()), ("HEIGHT", pa.string()),
                        ("pwatermark", pa.string())])
    as_text = [{"URL": row["URL"], "TEXT": row["TEXT"], "WIDTH": "800", "HEIGHT": "600", "pwatermark": "0.1"}
               for row in _good_rows()]
    bad = [{**as_text[0], "URL": "http://bad.example/1.jpg", "WIDTH": "wide"},
           {**as_text[0], "URL": "http://bad.example/2.jpg", "HEIGHT": "[600]"}]
    table = _assert_dropped(env, bad, "invalid_size", schema, good=as_text)
    assert table.schema.field("WIDTH").type == pa.int64() and table.column("WIDTH").to_pylist() == [800] * 3


def laion_nested_column(env: Env) -> None:
    table = pa.Table.from_pylist(_good_rows()).set_column(1, "TEXT", pa.array([["a"], ["b"], ["c"]]))
    pq.write_table(table, env.tmp_path / "nested.parquet")
    expect_error(lambda: _prepare(env, path=env.tmp_path / "nested.parquet"), "column 'TEXT'",
                 "holds list<element: string>, not text", "--set prepare_metadata.column_map=")


def laion_nulls(env: Env) -> None:
    good = _good_rows()
    metrics, table = _prepare(env, good + [laion_row(url=None), laion_row(url="http://n.example/1.jpg", width=None),
                                           laion_row(url="http://n.example/2.jpg", pwatermark=None)])
    assert (metrics["dropped_invalid_url"], metrics["dropped_invalid_size"],
            metrics["dropped_invalid_pwatermark"]) == (1, 1, 1)
    assert metrics["rows_kept"] == 3 and table.column("URL").to_pylist() == GOOD_URLS


def laion_negative_sizes(env: Env) -> None:
    _assert_dropped(env, [laion_row(url="http://n.example/1.jpg", width=-800),
                          laion_row(url="http://n.example/2.jpg", height=-1), laion_row(url="http://n.example/3.jpg",
                                                                                       height=0)], "invalid_size")


def laion_non_http_urls(env: Env) -> None:
    urls = ["ftp://files.example/1.jpg", "data:image/png;base64,AAAA", "file:///etc/passwd", "javascript:alert(1)",
            "images/relative.jpg", "", "http:// spaced.example/x.jpg"]
    _assert_dropped(env, [laion_row(url=url) for url in urls], "invalid_url")


def laion_duplicate_urls(env: Env) -> None:
    table = _assert_dropped(env, [laion_row(url=GOOD_URLS[0], text="again"), laion_row(url=GOOD_URLS[1])],
                            "duplicate_url")
    assert table.column("TEXT").to_pylist()[0] == "good photo 0"  # the first occurrence wins


def laion_empty_file(env: Env) -> None:
    folder = env.tmp_path / "laion"
    folder.mkdir()
    write_parquet(folder / "part-0.parquet", _good_rows())
    (folder / "part-1.parquet").write_bytes(b"")
    expect_error(lambda: _prepare(env, path=folder), "part-1.parquet is empty (0 bytes)",
                 "remove it from prepare_metadata.input_uri")
    no_rows = env.tmp_path / "no_rows.parquet"
    pq.write_table(pa.Table.from_pylist(_good_rows()).slice(0, 0), no_rows)
    expect_error(lambda: _prepare(env, path=no_rows), "hold no rows")


def laion_not_parquet(env: Env) -> None:
    html = env.tmp_path / "page.parquet"
    html.write_text("<html><body>404 Not Found</body></html>")
    expect_error(lambda: _prepare(env, path=html), "page.parquet is not a parquet file",
                 "replace it with a valid parquet file")


# -- images: one loopback site with every bad kind, downloaded once by the real download step ---------------

IMAGE_SIZE = 32
SOLID = (230, 120, 40)  # distinct channels: a red/blue swap would show
GOOD_PHOTOS = 4


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 2 KB PNG whose header declares width x height RGB pixels (30 GB decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress((b"\x00" + b"\x00" * width * 3) * 4, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=95) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


def _png16(array: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", array[..., ::-1] if array.ndim == 3 else array)  # cv2 wants BGR
    assert ok
    return encoded.tobytes()


def _odd_images() -> dict[str, tuple[bytes, tuple[int, int] | None]]:
    """file name -> (bytes, size to declare in the metadata); colours derive from SOLID."""
    solid = Image.new("RGB", (200, 150), SOLID)
    rgba = np.dstack([np.asarray(solid), np.full((150, 200), 128, np.uint8)])
    photo, _ = make_photo(Image.fromarray(PHOTO_SOURCES[1].load()).convert("RGB"), PHOTO_SOURCES[1], 0, 160,
                          (0.67, 1.5), np.random.default_rng(0))
    return {
        "not_an_image.jpg": (NOT_A_PHOTO, None),
        "truncated.jpg": (truncate_jpeg(_encode(photo, "JPEG")), photo.size),
        "bomb.png": (png_bomb(), (100_000, 100_000)),
        "cmyk.jpg": (_encode(solid.convert("CMYK"), "JPEG"), solid.size),
        "rgb16.png": (_png16(np.asarray(solid).astype(np.uint16) * 257), solid.size),
        "gray16.png": (_png16(np.full((150, 200), 40_000, np.uint16)), solid.size),
        "alpha.png": (_encode(Image.fromarray(rgba, "RGBA"), "PNG"), solid.size),
        "empty.jpg": (b"", solid.size),
    }


@dataclass(frozen=True)
class ImageDownload:
    metrics: dict[str, float]
    outcome: dict[str, tuple[str, str]]  # file name (or URL tail) -> (status, error reason message)
    images: dict[str, bytes]  # file name -> the JPEG in the shard
    site: Path


@pytest.fixture(scope="module")
def image_download(tmp_path_factory) -> ImageDownload:
    """Good photos plus every odd image kind on a loopback site, through prepare_metadata and download."""
    root = tmp_path_factory.mktemp("odd_images")
    site = root / "site"
    (site / "img").mkdir(parents=True)
    (root / "secret.txt").write_text("outside the served folder")
    port = free_port()
    rows = []
    for i in range(GOOD_PHOTOS):
        source = PHOTO_SOURCES[i]
        photo, caption = make_photo(Image.fromarray(source.load()).convert("RGB"), source, 0, 160, (0.67, 1.5),
                                    np.random.default_rng(i))
        (site / "img" / f"good_{i}.jpg").write_bytes(_encode(photo, "JPEG"))
        rows.append(laion_row(url=f"http://127.0.0.1:{port}/img/good_{i}.jpg", text=caption, width=photo.width,
                              height=photo.height))
    for name, (data, size) in _odd_images().items():
        (site / "img" / name).write_bytes(data)
        width, height = size or (640, 480)
        rows.append(laion_row(url=f"http://127.0.0.1:{port}/img/{name}", text=name, width=width, height=height))
    rows.append(laion_row(url=f"http://127.0.0.1:{port}/img/%2e%2e/%2e%2e/secret.txt", text="traversal"))
    write_parquet(root / "laion.parquet", rows)

    store = root / "store"
    config = PrepareMetadataConfig(source="laion", input_uri=str(root / "laion.parquet"), min_side=64)
    manifest, out = run_prepare_metadata(store, config, key="pm-odd")
    assert manifest.metrics["rows_kept"] == len(rows)
    upstream = StepOutput("prepare_metadata", "pm-odd", str(out), manifest)
    download_config = DownloadConfig(image_size=IMAGE_SIZE, samples_per_shard=8, processes_count=1, thread_count=4,
                            timeout_s=5, progress_interval_s=5.0)
    with serve_folder(site, "127.0.0.1", port):
        request = step_request(DownloadStep(), "dl-odd", download_config, store, {"prepare_metadata": upstream})
        download = execute_step(request)
    shards = Path(RunStore(str(store)).output_uri("download", "dl-odd")) / "shards"
    outcome, images, key_to_name = {}, {}, {}
    for part in sorted(shards.glob("*.parquet")):
        for row in pq.read_table(part, columns=["url", "key", "status", "error_message"]).to_pylist():
            name = row["url"].rsplit("/", 1)[-1]
            outcome[name] = (row["status"], row["error_message"] or "")
            key_to_name[row["key"]] = name
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".jpg"):
                    images[key_to_name[member.name.removesuffix(".jpg")]] = archive.extractfile(member).read()
    return ImageDownload(dict(download.metrics), outcome, images, site)


def _images(env: Env) -> ImageDownload:
    found = env.fixture("image_download")
    good = [f"good_{i}.jpg" for i in range(GOOD_PHOTOS)]
    assert all(found.outcome[name][0] == "success" for name in good), "good photos are never lost"
    for name in good:
        assert Image.open(io.BytesIO(found.images[name])).size == (IMAGE_SIZE, IMAGE_SIZE)
    return found


def _failed(env: Env, name: str, metric_reason: str, message: str) -> None:
    found = _images(env)
    status, error = found.outcome[name]
    assert status == "failed_to_resize" and message in error, (name, status, error)
    assert name not in found.images and found.metrics[f"images_failed_{metric_reason}"] >= 1


def _converted(env: Env, name: str, expected_rgb: tuple[float, float, float], tolerance: float = 6.0) -> None:
    """Downloaded, stored as an 8-bit JPEG, and decoded by the aesthetic filter as RGB of the expected colour."""
    from vlv.steps.aesthetic_filter import _decode_image

    found = _images(env)
    assert found.outcome[name][0] == "success", found.outcome[name]
    data = found.images[name]
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.format == "JPEG" and stored.size == (IMAGE_SIZE, IMAGE_SIZE)
    decoded = _decode_image({"jpg": [data]}, 0)
    assert decoded.mode == "RGB"
    mean = np.asarray(decoded, np.float64).reshape(-1, 3).mean(axis=0)
    assert np.abs(mean - np.array(expected_rgb)).max() <= tolerance, (name, mean.round(1), expected_rgb)


def image_not_an_image(env: Env) -> None:
    _failed(env, "not_an_image.jpg", "decode_error", "Image decoding error")


def image_truncated_jpeg(env: Env) -> None:
    _failed(env, "truncated.jpg", "decode_error", "Image decoding error")


def image_decompression_bomb(env: Env) -> None:
    from vlv.data.img2dataset_resizer import declared_pixels

    _failed(env, "bomb.png", "image_too_large", "image area too large")
    assert declared_pixels(png_bomb()) == 10**10  # read from the header: the pixels were never allocated


def image_bomb_in_a_shard(env: Env) -> None:
    """With resize_mode "no" a shard keeps originals: the scoring actor must turn a bomb into an error row."""
    from vlv.steps.aesthetic_filter import AestheticFilterConfig, AestheticScoringActor

    config = AestheticFilterConfig(model="tiny-random", keep="top_quantile", keep_top_quantile=0.5)
    actor = AestheticScoringActor(config=config, device="cpu")
    good = _encode(Image.new("RGB", (48, 32), SOLID), "JPEG")
    batch = {"__key__": ["000000000", "000000001", "000000002"], "__url__": ["/shards/00000.tar"] * 3,
             "jpg": [good, None, good], "png": [None, png_bomb(), None]}
    rows = actor(batch).select(["key", "score", "error"]).to_pylist()
    assert [row["error"] is None for row in rows] == [True, False, True] and rows[0]["score"] is not None
    assert rows[1]["error"].startswith("DecompressionBombError: Image size (10000000000 pixels) exceeds limit")


def image_cmyk(env: Env) -> None:
    _converted(env, "cmyk.jpg", SOLID)


def image_16bit(env: Env) -> None:
    _converted(env, "rgb16.png", SOLID)
    _converted(env, "gray16.png", (40_000 >> 8,) * 3)


def image_alpha(env: Env) -> None:
    _converted(env, "alpha.png", tuple(128 / 255 * c + 255 - 128 for c in SOLID))  # matted on white


def image_zero_bytes(env: Env) -> None:
    _failed(env, "empty.jpg", "empty_file", "!buf.empty()")


# -- captions: through the ingest_captions step (20 kept keys, KEPT_KEYS) -----------------------------------------


def _good_line(i: int) -> str:
    return response_line(KEPT_KEYS[i], f"Caption {i}: a red boat on a calm lake at dawn.")


def _ingest(env: Env, lines: list[str | bytes], *, newline: bytes = b"\n", prefix: bytes = b"",
            name: str = "captions.jsonl", **config) -> tuple[dict[str, float], list[dict], list[dict]]:
    path = env.tmp_path / name
    path.write_bytes(prefix + newline.join(x.encode() if isinstance(x, str) else x for x in lines) + newline)
    manifest, out = run_ingest_captions(env.tmp_path, env.fixture("kept_output"),
                             IngestCaptionsConfig(source=str(path), **config))
    return (manifest.metrics, pq.read_table(out / "captions.parquet").to_pylist(),
            pq.read_table(out / "quarantine.parquet").to_pylist())


def _assert_quarantined(env: Env, bad: list[str | bytes], reason: str, detail: str = "") -> list[dict]:
    """Two good lines, the bad ones, one good line: each bad line quarantined with its line number and reason."""
    lines = [_good_line(0), _good_line(1), *bad, _good_line(2)]
    metrics, captions, quarantine = _ingest(env, lines)
    assert [c["key"] for c in captions] == KEPT_KEYS[:3], "every good row is kept"
    assert [(q["reason"], q["line_number"]) for q in quarantine] == [(reason, 3 + i) for i in range(len(bad))]
    assert metrics[f"quarantined_{reason}"] == len(bad)
    assert all(detail in q["detail"] for q in quarantine), quarantine
    return quarantine


def caption_malformed_json(env: Env) -> None:
    _assert_quarantined(env, ['{"key": "00000003", "response": {"candidates": [', "not json", "[1, 2]"],
                        "malformed_json")


def caption_bom_crlf(env: Env) -> None:
    metrics, captions, quarantine = _ingest(env, [_good_line(i) for i in range(3)], newline=b"\r\n",
                                            prefix=b"\xef\xbb\xbf")
    assert quarantine == [] and metrics["captions_ok"] == 3
    assert [c["key"] for c in captions] == KEPT_KEYS[:3] and not any(c["caption"].endswith("\r") for c in captions)


def caption_wrong_encodings(env: Env) -> None:
    latin1 = _good_line(3).replace("boat", "caf\u00e9").encode("utf-8").replace("\u00e9".encode(), b"\xe9")
    surrogate = _good_line(4).replace("Caption", "\\ud800Caption")
    _assert_quarantined(env, [latin1, surrogate], "bad_encoding", "UTF-8")
    utf16 = env.tmp_path / "utf16.jsonl"
    utf16.write_text("\n".join(_good_line(i) for i in range(3)) + "\n", encoding="utf-16")
    expect_error(lambda: run_ingest_captions(env.tmp_path, env.fixture("kept_output"),
                                             IngestCaptionsConfig(source=str(utf16))),
                 "is UTF-16 text", "iconv -f UTF-16 -t UTF-8")


def caption_path_keys(env: Env) -> None:
    keys = ["../../etc/passwd", "a/b", "a\\b", "..", "/abs", "x\u0000y"]
    quarantine = _assert_quarantined(env, [response_line(key, "text") for key in keys], "bad_key")
    assert "path separator" in quarantine[0]["detail"] and "'..'" in quarantine[3]["detail"]


def caption_error_rows(env: Env) -> None:
    quarantine = _assert_quarantined(env, [error_line(KEPT_KEYS[3], 429, "Resource exhausted")], "error_row", "429")
    assert quarantine[0]["key"] == KEPT_KEYS[3]


def caption_blocked(env: Env) -> None:
    _assert_quarantined(env, [blocked_line(KEPT_KEYS[3], "PROHIBITED_CONTENT"),
                              response_line(KEPT_KEYS[4], "partial", finish_reason="SAFETY")], "blocked")


def caption_empty(env: Env) -> None:
    _assert_quarantined(env, [response_line(KEPT_KEYS[3], "  \n "), response_line(KEPT_KEYS[4], "")], "empty")


def caption_max_tokens(env: Env) -> None:
    _assert_quarantined(env, [response_line(KEPT_KEYS[3], "A caption cut short", finish_reason="MAX_TOKENS",
                                            output_tokens=1024)], "max_tokens", "1024")


def caption_duplicates(env: Env) -> None:
    lines = [_good_line(0), _good_line(1), response_line(KEPT_KEYS[0], "second caption"), _good_line(2)]
    metrics, captions, quarantine = _ingest(env, lines)
    assert [(q["reason"], q["line_number"], q["key"]) for q in quarantine] == [("duplicate_key", 3, KEPT_KEYS[0])]
    assert captions[0]["caption"].startswith("Caption 0") and len(captions) == 3  # the first one wins


def caption_unknown_keys(env: Env) -> None:
    quarantine = _assert_quarantined(env, [response_line("999999999", "an image we never kept")], "unknown_key")
    assert quarantine[0]["key"] == "999999999"


def caption_huge_line(env: Env) -> None:
    path = env.tmp_path / "huge.jsonl"
    with open(path, "wb") as out:
        out.write(_good_line(0).encode() + b"\n")
        out.write(f'{{"key": "{KEPT_KEYS[1]}", "response": {{"candidates": [{{"content": {{"parts": [{{"text": "'
                  .encode())
        block = b"z" * (1 << 20)
        for _ in range(100):
            out.write(block)
        out.write(b'"}]}}]}}\n' + _good_line(2).encode() + b"\n")
    manifest, out = run_ingest_captions(env.tmp_path, env.fixture("kept_output"),
                                        IngestCaptionsConfig(source=str(path)))
    quarantine = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert [(q["reason"], q["line_number"], q["key"]) for q in quarantine] == [("line_too_long", 2, KEPT_KEYS[1])]
    assert "104,857," in quarantine[0]["detail"] and "max_line_bytes" in quarantine[0]["detail"]
    assert pq.read_table(out / "captions.parquet").column("key").to_pylist() == [KEPT_KEYS[0], KEPT_KEYS[2]]


# -- config: loading (presets, files, --set) and preflight ---------------------------------------------------


def _load(preset: str = "tiny", file: Path | None = None, **overrides: str):
    from vlv.config import load_config

    return load_config(preset, str(file) if file else None, overrides)


def _preflight(config, step_name: str) -> None:
    from vlv.pipeline import step_by_name

    step_by_name(step_name).preflight(getattr(config, step_name))


def config_unknown_keys(env: Env) -> None:
    expect_error(lambda: _load(**{"download.image_sise": "3"}), "unknown config key 'download.image_sise'",
                 "valid keys there:", "image_size")
    (env.tmp_path / "c.yaml").write_text("download:\n  image_size: 48\nreprot:\n  x: 1\n")
    expect_error(lambda: _load(file=env.tmp_path / "c.yaml"), "unknown config key 'reprot.x'", "report")


def config_wrong_types(env: Env) -> None:
    expect_error(lambda: _load(**{"download.image_size": "big"}), "'download.image_size' expects int, got 'big'")
    (env.tmp_path / "c.yaml").write_text("download:\n  respect_opt_out: 3\n")
    expect_error(lambda: _load(file=env.tmp_path / "c.yaml"), "'download.respect_opt_out' expects bool")


def config_global_batch(env: Env) -> None:
    weights = {f"train_stage1.model.{name}_weights": str(env.tmp_path) for name in ("florence", "sd")}
    config = _load("paper", **{"train_stage1.deepspeed.global_batch": "500", **weights})
    expect_error(lambda: _preflight(config, "train_stage1"), "global_batch (500) must be a multiple of",
                 "64 x 8 = 512", "change global_batch, micro_batch_per_worker or num_workers")


def config_fp16_on_cpu(env: Env) -> None:
    config = _load(**{"train_stage2.deepspeed.precision": "fp16"})
    expect_error(lambda: _preflight(config, "train_stage2"), "precision='fp16'", "on CPU",
                 "use precision='bf16' or 'fp32'")


def config_zero_stage_4(env: Env) -> None:
    expect_error(lambda: _load(**{"train_stage1.deepspeed.zero_stage": "4"}), "zero_stage must be one of (0, 1, 2, 3)",
                 "got 4")


def config_sd35_in_fp16(env: Env) -> None:
    expect_error(lambda: _load("paper", **{"eval_fid.t2i_dtype": "float16"}), "eval_fid.t2i_dtype=float16",
                 "t2i_model=sd35_medium", "T5-XXL text encoder overflows", "--set eval_fid.t2i_dtype=bfloat16")


def config_port_in_ray_worker_range(env: Env) -> None:
    expect_error(lambda: _load(**{"prepare_metadata.tiny_port": "18765"}), "prepare_metadata.tiny_port=18765",
                 "Ray's worker port range 10002-19999", "hands those ports to its worker processes",
                 "or 0 (any free port)")
    assert _load(**{"prepare_metadata.tiny_port": "38765"}).prepare_metadata.tiny_port == 38765


def config_paper_missing_weights(env: Env) -> None:
    gone = env.tmp_path / "not_downloaded"
    paths = {"aesthetic_filter.predictor_weights": f"{gone}/sac+logos+ava1-l14-linearMSE.pth",
             "train_stage1.model.florence_weights": f"{gone}/Florence-2-large",
             "train_stage1.model.sd_weights": f"{gone}/stable-diffusion-2-1-base",
             "train_stage2.model.llm_weights": f"{gone}/Qwen2.5-3B",
             "eval_fid.inception_weights": f"{gone}/pt_inception.pth", "eval_vqa.llm_path": f"{gone}/llm"}
    missing = _load("paper", **paths)
    for setting in ("aesthetic_filter.predictor_weights", "train_stage1.model.florence_weights",
                    "train_stage2.model.llm_weights", "eval_fid.inception_weights", "eval_vqa.llm_path"):
        expect_error(lambda s=setting: _preflight(missing, s.split(".")[0]), setting, paths[setting])
    sd_missing = _load("paper", **{**paths, "train_stage1.model.florence_weights": str(env.tmp_path)})
    expect_error(lambda: _preflight(sd_missing, "train_stage1"), "train_stage1.model.sd_weights",
                 paths["train_stage1.model.sd_weights"], "does not exist")
    unset = _load("paper")  # nothing set: each step says what to set
    for setting in ("aesthetic_filter.predictor_weights", "train_stage1.model.florence_weights",
                    "train_stage2.model.llm_weights", "eval_vqa.llm_path"):
        expect_error(lambda s=setting: _preflight(unset, s.split(".")[0]), setting, "is not set")


def config_paper_all_missing_at_once(env: Env) -> None:
    import contextlib

    from pipelines import full_run

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert full_run.main(["--preset", "paper", "--store", str(env.tmp_path / "store")]) == 2
    message = err.getvalue()
    for setting in ("prepare_metadata.input_uri", "aesthetic_filter.predictor_weights", "ingest_captions.source",
                    "train_stage1.model.florence_weights", "train_stage1.model.sd_weights",
                    "train_stage2.model.llm_weights", "eval_vqa.llm_path"):
        assert setting in message, f"{setting} not named: {message}"
    assert "problems, no step was run" in message and "Traceback" not in message


def config_ignored_settings(env: Env) -> None:
    cases = (("ingest_captions.source", "/data/gemini/*.jsonl", "ingest_captions.generate_tiny=false"),
             ("prepare_metadata.input_uri", "/data/laion", "prepare_metadata.source=laion"),
             ("eval_vqa.llm_path", "/models/llm", "eval_vqa.llm=pretrained"),
             ("aesthetic_filter.predictor_weights", "/m/p.pth", "aesthetic_filter.model=pretrained"),
             ("train_stage1.model.florence_weights", "/m/f", "train_stage1.model.init=pretrained"))
    for setting, value, switch in cases:
        expect_error(lambda s=setting, v=value: _load("tiny", **{s: v}), setting.rsplit(".", 1)[-1], "ignored", switch)


def config_missing_watermark_column(env: Env) -> None:
    rows = [{k: v for k, v in row.items() if k != "pwatermark"} for row in _good_rows()]
    expect_error(lambda: _prepare(env, rows), "pwatermark", "column_map",
                 "--set prepare_metadata.max_pwatermark=null")


# -- security: no path built from data leaves its root ---------------------------------------------------------


def security_store_names(env: Env) -> None:
    store = RunStore(str(env.tmp_path / "store"))
    for step, key in (("download", "../../outside"), ("../steps", "k"), ("download", "/abs"), ("download", "a/b"),
                      ("download", "nul\x00")):
        expect_error(lambda s=step, k=key: store.output_uri(s, k), str(env.tmp_path / "store"),
                     "refusing to use it as a path")
        expect_error(lambda s=step, k=key: store.read_manifest(s, k), "would leave")
    assert store.output_uri("download", "0123abcd") == str(env.tmp_path / "store" / "steps" / "download" / "0123abcd")
    assert sorted(p.name for p in env.tmp_path.iterdir()) == ["store"]


def security_coco_file_names(env: Env) -> None:
    from vlv.eval.coco_captions import load_coco_captions

    for bad in ("../../etc/passwd", "/etc/passwd", "images/../../x.jpg"):
        path = env.tmp_path / "captions.json"
        path.write_text(json.dumps({"images": [{"id": 1, "file_name": "ok.jpg"}, {"id": 2, "file_name": bad}],
                                    "annotations": [{"id": 1, "image_id": 1, "caption": "a"},
                                                    {"id": 2, "image_id": 2, "caption": "b"}]}))
        expect_error(lambda p=path: load_coco_captions(p), "images[1]: file_name", repr(bad), "would leave")


def security_eval_image_paths(env: Env) -> None:
    from vlv.eval.eval_sets import EvalSets, VqaSplit, image_files
    from vlv.steps.eval_fid import evaluation_images

    index = env.tmp_path / "index.json"
    index.write_text(json.dumps({"images": [{"id": 7, "file_name": "/etc/passwd"}]}))
    expect_error(lambda: image_files(VqaSplit("q.json", "a.json", str(env.tmp_path), image_index_json=str(index)), [7]),
                 "images[0]: file_name", "'/etc/passwd' is absolute")
    pattern = VqaSplit("q.json", "a.json", str(env.tmp_path), image_file_pattern="../{image_id}.jpg")
    expect_error(lambda: image_files(pattern, [7]), "image_file_pattern '../7.jpg'", "'..'")
    folder = env.tmp_path / "caption_eval"
    folder.mkdir()
    (folder / "eval_sets.json").write_text(EvalSets("c.json", "images", 0, (), tiny=True).to_json())
    pq.write_table(pa.table({"image_id": [1], "file_name": ["../../../etc/passwd"], "caption": ["x"]}),
                   folder / "captions.parquet")
    from vlv.engine.step_output import output_of_folder

    expect_error(lambda: evaluation_images(output_of_folder("caption_eval", "k", folder), 0),
                 "COCO file_name '../../../etc/passwd'", "would leave")


def security_shard_names(env: Env) -> None:
    from vlv.train.data import WebDatasetImageStream

    pq.write_table(pa.table({"key": ["000000001"], "shard": ["../../outside.tar"]}), env.tmp_path / "kept.parquet")
    stream = WebDatasetImageStream(shards_uri=str(env.tmp_path / "shards"),
                                   samples_uri=str(env.tmp_path / "kept.parquet"))
    expect_error(lambda: next(stream.samples(rank=0, world_size=1)), "shard name", "'../../outside.tar'",
                 "path separator")


def security_site_folder(env: Env) -> None:
    from vlv.steps.download import _serving

    upstream = StepOutput("prepare_metadata", "k", str(env.tmp_path), manifest=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="loopback_site.json folder '../..' contains a path separator"):
        with _serving(upstream, {"folder": "../..", "host": "127.0.0.1", "port": 1}, ctx=None):  # type: ignore
            pass


def security_url_traversal(env: Env) -> None:
    found = _images(env)
    status, error = found.outcome["secret.txt"]
    assert status == "failed_to_download" and "HTTP Error 404" in error
    assert found.metrics["images_failed_http_404"] == 1


# -- evaluation: the VQA endpoint and the caption arena's judge --------------------------------------------------


def vqa_endpoint_down(env: Env) -> None:
    from vlv.config import load_config
    from vlv.eval.vqa_endpoint import endpoint_answers
    from vlv.testing.object_store import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    vqa = load_config("tiny", overrides={
        "eval_vqa.llm": "endpoint", "eval_vqa.endpoint_url": url, "eval_vqa.endpoint_model": "deepseek-chat",
        "eval_vqa.endpoint_max_retries": "2", "eval_vqa.endpoint_backoff_s": "0.01"}).eval_vqa
    expect_error(lambda: endpoint_answers(["Question: what is shown?\nShort answer:"], vqa.chat_endpoint(),
                                          concurrency=vqa.endpoint_concurrency, cache_uri=str(env.tmp_path),
                                          chunk_size=vqa.endpoint_cache_chunk),
                 f"{url}/chat/completions did not answer after 3 attempts (last: connection refused)",
                 "check that the server is up", "eval_vqa.endpoint_url", "rerun the same command to continue")


def arena_score_out_of_range(env: Env) -> None:
    from vlv.steps.eval_arena import EvalArenaConfig, EvalArenaStep
    from vlv.testing.builders import run_step as run_eval_step

    upstream = fake_caption_eval(env.tmp_path / "caption_eval")
    replies = [("vlv-101", 5), ("vlv-102", 7), ("vlv-103", 4.5), ("vlv-104", 2), ("vlv-105", -1)]
    judge = env.tmp_path / "judge.jsonl"
    judge.write_text("".join(response_line(key, json.dumps({"justification": "seen", "score": score})) + "\n"
                             for key, score in replies))
    output = run_eval_step(RunStore(str(env.tmp_path / "store")), EvalArenaStep(),
                           EvalArenaConfig(num_images=5, judge_output=str(judge)), {"caption_eval": upstream}, "arena")
    quarantine = pq.read_table(output.local_dir / "quarantine.parquet").to_pylist()
    assert [(q["key"], q["reason"], q["line_number"], q["detail"]) for q in quarantine] == [
        ("vlv-102", "bad_score", 2, "score 7 is outside 0-6"),
        ("vlv-103", "bad_score", 3, "score 4.5 is not an integer"),
        ("vlv-105", "bad_score", 5, "score -1 is outside 0-6")]
    judged = pq.read_table(output.local_dir / "arena_judgements.parquet").to_pylist()
    assert [(j["key"], j["score"]) for j in judged] == [("vlv-101", 5), ("vlv-104", 2)]
    assert output.manifest.metrics["arena_score"] == 3.5


# -- the table ---------------------------------------------------------------------------------------------------

LAION, IMAGES, CAPTIONS, CONFIG, STORE, SECURITY = ("LAION metadata", "Images", "Captions", "Config", "Object store",
                                                 "Security")
EVALUATION = "Evaluation"
def _store_error(store_uri: str, endpoint: str) -> str:
    """The one-line error `full_run.py` prints for a store, with AWS_ENDPOINT_URL pointing at `endpoint`."""
    import contextlib
    import os

    from pipelines import full_run

    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            assert full_run.main(["--preset", "tiny", "--store", store_uri, "--dry-run"]) == 2
    finally:
        os.environ["AWS_ENDPOINT_URL"] = previous or ""
    lines = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err.getvalue()
    return lines[0]


def store_endpoint_unreachable(env: Env) -> None:
    from vlv.testing.object_store import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    line = _store_error("s3://any-bucket/runs", endpoint)
    assert "does not answer" in line and endpoint in line and "AWS_ENDPOINT_URL" in line, line


def store_bucket_missing(env: Env) -> None:
    server = env.fixture("s3_server")
    line = _store_error("s3://no-such-bucket/runs", server.endpoint)
    assert "the bucket does not exist" in line and "create it first" in line, line


def store_credentials_refused(env: Env) -> None:
    from vlv.testing.object_store import S3Server

    with S3Server(check_credentials=True) as strict:
        line = _store_error("s3://any-bucket/runs", strict.endpoint)
    assert "refused the credentials" in line and "AWS_ACCESS_KEY_ID" in line, line
    assert "AWS_SECRET_ACCESS_KEY" in line and "fake/aws+Secret" not in line  # the name, never the value


def store_manifest_files_missing(env: Env) -> None:
    from vlv.engine.storage import filesystem

    bucket = env.fixture("s3_bucket")
    store = RunStore(f"s3://{bucket}/runs")
    attempt = store.begin_attempt("prepare_metadata", "k", resume=False)
    (attempt.local_dir / "metadata.parquet").write_bytes(b"PAR1 not really")
    (attempt.local_dir / "funnel.csv").write_text("stage,count\n")
    store.commit(attempt, _manifest_of(store, attempt))
    output = store.output("prepare_metadata", "k")
    fs, path = filesystem(output.path("funnel.csv"))
    fs.rm_file(path)  # e.g. a lifecycle rule or a person deleted it
    from vlv.engine.manifest import verify_files

    problems = verify_files(output.uri, output.manifest)
    assert problems == [f"{output.path('funnel.csv')}: missing"], problems
    from vlv.run import StepFailed, _check_input

    class _Tracking:  # the pre-step input check records the failure on the step's MLflow run
        def finish_child(self, *args, **kwargs) -> None:
            pass

    with pytest.raises(StepFailed, match=r"output of 'prepare_metadata' is damaged .*funnel.csv: missing.*"
                                         r"--force prepare_metadata"):
        _check_input("download", output, _Tracking(), "run-id")


def _manifest_of(store: RunStore, attempt) -> object:
    from vlv.engine.manifest import Manifest

    return Manifest(attempt.step, attempt.key, "1", {}, {}, store.attempt_files(attempt), {})


CASES: tuple[Case, ...] = (
    Case(LAION, "missing_column",
         "a parquet without a column the filter needs (pwatermark)",
         "error naming the column, the columns found and `--set prepare_metadata.column_map=...`",
         laion_missing_column),
    Case(LAION, "renamed_columns",
         "a release's own names: url, caption, width, prob_watermark, NSFW labels",
         "recognised as aliases; every row kept", laion_renamed_columns),
    Case(LAION, "wrong_types",
         "sizes stored as text, some not numbers",
         "numbers read from the text; the rest dropped as `invalid_size` in funnel.csv; good rows kept",
         laion_wrong_scalar_types),
    Case(LAION, "nested_column",
         "a list or struct column where text or a number belongs",
         "error naming the column, its type and the `column_map` fix", laion_nested_column),
    Case(LAION, "nulls",
         "null URL, size or pwatermark",
         "dropped as `invalid_url` / `invalid_size` / `invalid_pwatermark`; good rows kept", laion_nulls),
    Case(LAION, "negative_sizes",
         "WIDTH or HEIGHT negative or zero",
         "dropped as `invalid_size`; good rows kept", laion_negative_sizes),
    Case(LAION, "non_http_urls",
         "ftp:, data:, file:, javascript:, relative and empty URLs",
         "dropped as `invalid_url`; good rows kept", laion_non_http_urls),
    Case(LAION, "duplicate_urls",
         "the same URL twice (within or across files)",
         "later ones dropped as `duplicate_url`, the first kept", laion_duplicate_urls),
    Case(LAION, "empty_file",
         "a 0-byte file among good ones, or a parquet with no rows",
         "error naming the file: remove or replace it", laion_empty_file),
    Case(LAION, "not_parquet",
         "an HTML page named .parquet",
         "error naming the file as not parquet", laion_not_parquet),
    Case(IMAGES, "not_an_image",
         "an HTML page served as image/jpeg",
         "`failed_to_resize`, reason `decode_error`; the good photos downloaded", image_not_an_image),
    Case(IMAGES, "truncated_jpeg",
         "a JPEG cut after its header",
         "`failed_to_resize`, reason `decode_error`", image_truncated_jpeg),
    Case(IMAGES, "decompression_bomb",
         "a 2 KB PNG declaring 100000 x 100000 pixels",
         "refused from its header before decoding (`download.max_image_pixels`): reason `image_too_large`",
         image_decompression_bomb),
    Case(IMAGES, "bomb_in_a_shard",
         "a bomb reaching the aesthetic filter's decoder",
         "an `undecodable` row with reason `DecompressionBombError`, not a crash", image_bomb_in_a_shard),
    Case(IMAGES, "cmyk",
         "a CMYK JPEG",
         "downloaded as an RGB JPEG of the right colours", image_cmyk),
    Case(IMAGES, "16_bit",
         "16-bit RGB and greyscale PNGs",
         "scaled to 8 bits, downloaded as JPEGs of the right values (not saturated white)", image_16bit),
    Case(IMAGES, "alpha",
         "an RGBA PNG, half transparent",
         "matted on white, downloaded as an RGB JPEG", image_alpha),
    Case(IMAGES, "zero_bytes",
         "a 0-byte response",
         "`failed_to_resize`, reason `empty_file`", image_zero_bytes),
    Case(CAPTIONS, "malformed_json",
         "cut-off objects, plain text, a JSON array as a line",
         "quarantined `malformed_json` with line numbers; good lines kept", caption_malformed_json),
    Case(CAPTIONS, "bom_crlf",
         "a UTF-8 BOM and CRLF line ends",
         "read as normal input; no quarantine", caption_bom_crlf),
    Case(CAPTIONS, "wrong_encodings",
         "a Latin-1 line, a lone surrogate escape; a whole UTF-16 file",
         "lines quarantined `bad_encoding` with the byte; the UTF-16 file refused with the `iconv` command",
         caption_wrong_encodings),
    Case(CAPTIONS, "path_keys",
         "keys with `/`, `\\`, `..`, an absolute path, a NUL",
         "quarantined `bad_key`", caption_path_keys),
    Case(CAPTIONS, "error_rows",
         "a Batch API error row (429)",
         "quarantined `error_row` with code and message", caption_error_rows),
    Case(CAPTIONS, "blocked",
         "promptFeedback.blockReason, finishReason SAFETY",
         "quarantined `blocked`", caption_blocked),
    Case(CAPTIONS, "empty",
         "a response with blank or no text",
         "quarantined `empty`", caption_empty),
    Case(CAPTIONS, "max_tokens",
         "finishReason MAX_TOKENS",
         "quarantined `max_tokens` with the token count", caption_max_tokens),
    Case(CAPTIONS, "duplicates",
         "two captions for one image",
         "the second quarantined `duplicate_key`, the first kept", caption_duplicates),
    Case(CAPTIONS, "unknown_keys",
         "a key that is no kept image",
         "quarantined `unknown_key`", caption_unknown_keys),
    Case(CAPTIONS, "huge_line",
         "one 100 MB line",
         "quarantined `line_too_long` without being held in memory; the lines around it kept", caption_huge_line),
    Case(CONFIG, "unknown_keys",
         "`--set download.image_sise=3`, an unknown section in a YAML file",
         "error naming the key and the valid keys there", config_unknown_keys),
    Case(CONFIG, "wrong_types",
         "`--set download.image_size=big`, a number for a bool in YAML",
         "error naming the key and the expected type", config_wrong_types),
    Case(CONFIG, "global_batch",
         "global batch 500 with 8 workers x micro batch 64",
         "preflight error: must be a multiple of 512; what to change", config_global_batch),
    Case(CONFIG, "fp16_on_cpu",
         "precision fp16 without GPUs",
         "preflight error: use bf16 or fp32", config_fp16_on_cpu),
    Case(CONFIG, "zero_stage_4",
         "`deepspeed.zero_stage=4`",
         "error listing stages 0-3", config_zero_stage_4),
    Case(CONFIG, "sd35_in_fp16",
         "`--set eval_fid.t2i_dtype=float16` with SD 3.5 Medium (`paper`)",
         "error: its T5-XXL encoder overflows in float16; use `eval_fid.t2i_dtype=bfloat16` as its model card",
         config_sd35_in_fp16),
    Case(CONFIG, "port_in_ray_worker_range",
         "`--set prepare_metadata.tiny_port=18765`, a port in Ray's worker range",
         "error naming the range 10002-19999 and why (Ray hands those ports to its workers); 0 = any free port",
         config_port_in_ray_worker_range),
    Case(CONFIG, "paper_missing_weights",
         "`paper` with weight paths that do not exist, or unset",
         "preflight error naming the setting, before any step runs", config_paper_missing_weights),
    Case(CONFIG, "paper_all_missing",
         "`--preset paper` with nothing set",
         "one error listing every setting to fill (data, weights, captions), before anything runs",
         config_paper_all_missing_at_once),
    Case(CONFIG, "ignored_settings",
         "a setting the preset would ignore (`ingest_captions.source` under `tiny`, ...)",
         "error naming the switch that makes it count (e.g. `ingest_captions.generate_tiny=false`)",
         config_ignored_settings),
    Case(LAION, "no_watermark_column",
         "a LAION release without a watermark column",
         "error offering `column_map` or `--set prepare_metadata.max_pwatermark=null`",
         config_missing_watermark_column),
    Case(SECURITY, "store_names",
         "step names or keys with `..`, `/`, an absolute path, a NUL",
         "error naming the value and the store; nothing written", security_store_names),
    Case(SECURITY, "coco_file_names",
         "COCO `file_name` with `..` or an absolute path",
         "error naming the entry and the value", security_coco_file_names),
    Case(SECURITY, "eval_image_paths",
         "VQA image index, `image_file_pattern`, captions.parquet `file_name` leaving the images folder",
         "error naming the value", security_eval_image_paths),
    Case(SECURITY, "shard_names",
         "a shard name `../../outside.tar` in kept.parquet",
         "the training stream refuses it, naming the value", security_shard_names),
    Case(SECURITY, "site_folder",
         "a `loopback_site.json` folder of `../..`",
         "the download step refuses it", security_site_folder),
    Case(STORE, "endpoint_unreachable",
         "an `s3://` store whose endpoint (`AWS_ENDPOINT_URL`) does not answer",
         "one line: the object store does not answer, fix `AWS_ENDPOINT_URL`; nothing runs",
         store_endpoint_unreachable),
    Case(STORE, "bucket_missing",
         "an `s3://` store in a bucket that does not exist",
         "one line: the bucket does not exist, create it first", store_bucket_missing),
    Case(STORE, "credentials_refused",
         "credentials the object store refuses",
         "one line naming the variables to set (never their values)", store_credentials_refused),
    Case(STORE, "manifest_files_missing",
         "a committed output on an object store whose file was deleted",
         "`vlv verify` and the pre-step input check name the missing file (then `--force <step>`)",
         store_manifest_files_missing),
    Case(SECURITY, "url_traversal",
         "a URL with `%2e%2e/` towards a file outside the served folder",
         "`failed_to_download` (HTTP 404): URLs never become file paths", security_url_traversal),
    Case(EVALUATION, "vqa_endpoint_down",
         "`eval_vqa.llm=endpoint` with a server that does not answer (refused, timing out, 5xx)",
         "retried with backoff, then one error naming the URL, the attempts, the last failure and the fix "
         "(`eval_vqa.endpoint_url`); answers received so far stay cached", vqa_endpoint_down),
    Case(EVALUATION, "arena_score_out_of_range",
         "a caption-arena judge line scoring 7, -1 or 4.5",
         "quarantined `bad_score` with the line and the reason; the other lines scored", arena_score_out_of_range),
)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.category.split()[0].lower()}-{c.name}" for c in CASES])
def test_failure_case(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    case.check(Env(tmp_path, request))


def test_every_image_outcome_is_accounted_for(image_download: ImageDownload) -> None:
    """Nothing silently lost: every served row is a success or a failure with a reason, and the counts add up."""
    expected_ok = GOOD_PHOTOS + 4  # cmyk, rgb16, gray16, alpha
    assert image_download.metrics["images_ok"] == expected_ok == len(image_download.images)
    assert image_download.metrics["images_failed"] == 5  # html, truncated, bomb, empty, traversal
    assert all(error for status, error in image_download.outcome.values() if status != "success")


def test_case_names_are_unique() -> None:
    names = [(case.category, case.name) for case in CASES]
    assert len(set(names)) == len(names)


# -- README -----------------------------------------------------------------------------------------------------


def failure_modes_markdown() -> str:
    """The README section: one table row per case, in catalogue order."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    intro = (f"Every bad input below is a case of `tests/test_failure_catalogue.py`, which feeds it to the real code "
             f"path and checks the outcome; this table is generated from it (`{REGENERATE}`). Good rows given "
             f"alongside a bad one are always kept.")
    lines = ["## Failure modes", "", *textwrap.wrap(intro, 115), "", "| category | input | outcome |", "|---|---|---|"]
    lines += [f"| {cell(c.category)} | {cell(c.given)} | {cell(c.outcome)} |" for c in CASES]
    return "\n".join(lines) + "\n"


def readme_section(text: str) -> str:
    start, end = text.index(START) + len(START), text.index(END)
    return text[start:end].strip("\n") + "\n"


def write_readme(path: Path = README) -> None:
    text = path.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    path.write_text(text[:start] + "\n" + failure_modes_markdown() + text[end:])


def test_readme_failure_modes_section_is_current() -> None:
    text = README.read_text()
    assert START in text and END in text, f"README.md lacks the {START} / {END} markers"
    assert readme_section(text) == failure_modes_markdown(), (
        f"README.md's Failure modes section is stale: regenerate it with `{REGENERATE}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="print or write README.md's Failure modes section")
    parser.add_argument("--write-readme", action="store_true", help=f"rewrite the section of {README}")
    args = parser.parse_args(argv)
    if args.write_readme:
        write_readme()
        print(f"wrote the Failure modes section ({len(CASES)} cases) into {README}")
    else:
        print(failure_modes_markdown(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
