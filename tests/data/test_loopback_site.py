"""The tiny source: real photos built deterministically, served on loopback, with broken rows that really break."""

from __future__ import annotations

import hashlib
import io
import socket
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlv.data.laion import MetadataFilter
from vlv.data.laion_prepare import prepare_laion_metadata
from vlv.data.loopback_site import (
    CANONICAL_BASE_URL,
    TinySiteSpec,
    build_loopback_site,
    canonical_urls,
    probe_urls,
    serve_folder,
)
from vlv.ports import free_port, in_ray_worker_range

RULE = MetadataFilter(min_side=64, min_aspect=0.5, max_aspect=2.0, max_pwatermark=0.5)
SPEC = TinySiteSpec(num_images=14, image_side=160, seed=3)


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return build_loopback_site(tmp_path_factory.mktemp("site") / "loopback_site", SPEC, RULE)


def test_site_builds_deterministically(site, tmp_path):
    again = build_loopback_site(tmp_path / "again", SPEC, RULE)
    assert again.rows.equals(site.rows)
    assert _digests(again.folder) == _digests(site.folder)
    other_seed = build_loopback_site(tmp_path / "other", TinySiteSpec(**{**SPEC.__dict__, "seed": 4}), RULE)
    assert _digests(other_seed.folder) != _digests(site.folder)


def test_good_photos_are_real_images_that_pass_the_prefilter(site):
    rows = {}
    for row in site.rows.to_pylist():
        rows.setdefault(row["URL"], row)  # the planted duplicate comes later
    assert len(site.good_urls) == SPEC.num_images
    for url in site.good_urls:
        path = site.folder / url.split("/", 3)[-1]
        with Image.open(path) as image:
            image.load()
            assert image.size == (rows[url]["WIDTH"], rows[url]["HEIGHT"])
            assert max(image.size) == SPEC.image_side and min(image.size) > RULE.min_side
            assert np.asarray(image).std() > 10  # a photo, not a flat fill
        assert rows[url]["TEXT"] and rows[url]["pwatermark"] < 0.5
    assert len({r["TEXT"] for r in rows.values()}) > SPEC.num_images // 2


def test_prefilter_drops_exactly_the_planted_rows(site, tmp_path):
    source = tmp_path / "source.parquet"
    pq.write_table(site.rows, source)
    funnel = prepare_laion_metadata(str(source), str(tmp_path / "out.parquet"), RULE)
    drops = {k: v for k, v in funnel.drop_counts().items() if v}
    assert drops == site.expected_drops == {"too_small": 1, "bad_aspect": 1, "watermarked": 1, "duplicate_url": 1}
    kept = set(pq.read_table(tmp_path / "out.parquet").column("URL").to_pylist())
    assert kept == set(site.good_urls) | set(site.missing_urls) | set(site.broken_urls)


def test_truncated_jpeg_really_fails_to_decode(site):
    data = (site.folder / "photos" / "truncated.jpg").read_bytes()
    image = Image.open(io.BytesIO(data))  # the header parses ...
    assert image.format == "JPEG"
    with pytest.raises(OSError):
        image.load()  # ... the pixels do not
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None  # img2dataset's decoder


def test_server_answers_200_for_photos_and_404_for_missing_ones(site):
    port = free_port()
    with serve_folder(site.folder, "127.0.0.1", port) as server:
        assert server.port == port
        statuses = probe_urls([server.served_url(u) for u in site.good_urls + site.missing_urls + site.broken_urls])
        first = server.served_url(site.good_urls[0])
        assert first == f"http://127.0.0.1:{port}/" + site.good_urls[0].removeprefix(CANONICAL_BASE_URL + "/")
        with urllib.request.urlopen(first, timeout=5) as response:
            body = response.read()
            assert response.headers["Content-Type"] == "image/jpeg"
        with urllib.request.urlopen(server.url("photos/not_a_photo.jpg"), timeout=5) as response:
            assert response.headers["Content-Type"] == "image/jpeg"  # served as an image ...
            assert response.read().startswith(b"<!DOCTYPE html>")  # ... but an HTML page
        with urllib.request.urlopen(server.url("opt_out/photo.jpg"), timeout=5) as response:
            assert "noai" in response.headers["X-Robots-Tag"]
    assert body == (site.folder / site.good_urls[0].split("/", 3)[-1]).read_bytes()
    served = [f"http://127.0.0.1:{port}/{u.split('/', 3)[-1]}" for u in site.good_urls + site.broken_urls]
    assert [statuses[u] for u in served] == [200] * (SPEC.num_images + 3)
    assert sorted(statuses.values()).count(404) == 2
    with pytest.raises(urllib.error.URLError):  # stopped with the block
        urllib.request.urlopen(first, timeout=2)


def test_data_urls_name_no_port_and_map_to_any_served_port_and_back(site):
    urls = site.rows.column("URL").to_pylist()
    assert all(u.startswith(CANONICAL_BASE_URL + "/") for u in urls)
    assert site.info() == {"base_url": CANONICAL_BASE_URL, "folder": "loopback_site", "good_photos": 14,
                           "expected_download_failures": 5}
    with serve_folder(site.folder) as first, serve_folder(site.folder) as second:  # two sites at once
        assert first.port != second.port
        for server in (first, second):
            assert not in_ray_worker_range(server.port)
            served = server.served_urls().apply_arrow(site.rows.column("URL"))
            assert served.to_pylist() == [u.replace(CANONICAL_BASE_URL, server.base_url) for u in urls]
            assert canonical_urls().apply_arrow(served).to_pylist() == urls
            assert [canonical_urls().apply(server.served_url(u)) for u in urls] == urls


def test_a_port_in_rays_worker_range_is_refused_with_the_reason(site):
    with pytest.raises(ValueError, match=r"prepare_metadata.tiny_port=18765 lies in Ray's worker port range "
                                         r"10002-19999: Ray hands those ports to its worker processes"):
        with serve_folder(site.folder, "127.0.0.1", 18765):
            pass


def test_busy_port_and_non_loopback_host_are_clear_errors(site):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ValueError, match=f"127.0.0.1:{port}.*prepare_metadata.tiny_port"):
            with serve_folder(site.folder, "127.0.0.1", port):
                pass
    with pytest.raises(ValueError, match="loopback"):
        with serve_folder(site.folder, "0.0.0.0", 0):
            pass


def test_photo_side_too_small_for_the_filter_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="tiny_image_side"):
        build_loopback_site(tmp_path / "s", TinySiteSpec(num_images=2, image_side=90), RULE)
