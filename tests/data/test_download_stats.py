"""Counting img2dataset's results: reasons, per-status attribution from the shard parquet, progress lines."""

from __future__ import annotations

import json
import logging
import re
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlv.data.download_stats import DownloadProgress, read_download_counts, short_reason


@pytest.mark.parametrize(("message", "reason"), [
    ("HTTP Error 404: File not found", "http_404"),
    ("HTTP Error 503: Service Unavailable", "http_503"),
    ("Use of image disallowed by X-Robots-Tag directive", "opt_out"),
    ("<urlopen error timed out>", "timeout"),
    ("The read operation timed out", "timeout"),
    ("Image decoding error", "decode_error"),
    ("<urlopen error [Errno 111] Connection refused>", "connection_refused"),
    ("<urlopen error [Errno -2] Name or service not known>", "dns_error"),
    ("<urlopen error [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed>", "ssl_error"),
    ("image too small", "image_too_small"),
    ("Weird!! <thing> happened: 42", "weird_thing_happened_42"),
    (None, ""),
    ("success", ""),
])
def test_short_reason(message, reason):
    assert short_reason(message) == reason


def _shard(folder, name, rows, write_parquet=True):
    statuses = [s for s, _ in rows]
    stats = {"count": len(rows), "successes": statuses.count("success"),
             "failed_to_download": statuses.count("failed_to_download"),
             "failed_to_resize": statuses.count("failed_to_resize"), "duration": 1.0, "start_time": 0.0,
             "end_time": 1.0, "status_dict": {}}
    for status, message in rows:
        key = "success" if status == "success" else message
        stats["status_dict"][key] = stats["status_dict"].get(key, 0) + 1
    (folder / f"{name}_stats.json").write_text(json.dumps(stats))
    if write_parquet:
        pq.write_table(pa.table({"status": statuses, "error_message": [m for _, m in rows]}),
                       folder / f"{name}.parquet")


def test_counts_by_status_and_reason(tmp_path):
    _shard(tmp_path, "00000", [("success", None)] * 3 + [("failed_to_download", "HTTP Error 404: File not found")])
    _shard(tmp_path, "00001", [("success", None), ("failed_to_resize", "Image decoding error"),
                               ("failed_to_download", "HTTP Error 404: File not found")])
    _shard(tmp_path, "00002", [("success", None), ("failed_to_resize", "Image decoding error")],
           write_parquet=False)
    (tmp_path / "00003.tar").write_bytes(b"")  # an unfinished shard (no stats) does not count
    counts = read_download_counts(tmp_path)
    assert (counts.images_ok, counts.images_failed, counts.samples, len(counts.shards)) == (5, 4, 9, 3)
    assert counts.failed_by_reason() == {"decode_error": 2, "http_404": 2}
    assert counts.by_status_reason[("failed_to_download", "http_404")] == 2
    assert counts.by_status_reason[("failed_to_resize", "decode_error")] == 1
    assert counts.by_status_reason[("failed", "decode_error")] == 1  # from the stats file alone
    assert counts.csv_rows()[0] == ("success", "", 5, "")
    assert ("failed_to_download", "http_404", 2, "HTTP Error 404: File not found") in counts.csv_rows()


def test_progress_logs_counts_and_skips_earlier_shards(tmp_path, caplog):
    _shard(tmp_path, "00000", [("success", None)] * 4)  # finished by an earlier attempt
    logger = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        with DownloadProgress(tmp_path, total_shards=3, total_rows=10, interval_s=60, logger=logger):
            _shard(tmp_path, "00001", [("success", None)] * 3 + [("failed_to_download", "HTTP Error 404: x")])
    lines = [r.getMessage() for r in caplog.records]
    assert "1 of 3 shards already finished" in lines[0]
    assert "2/3 shards after" in lines[-1] and "4 samples this attempt (3 ok, 1 failed)" in lines[-1]


def test_progress_prints_a_line_when_a_shard_finishes_not_every_interval(tmp_path, caplog):
    logger = logging.getLogger("test.quiet_progress")
    with caplog.at_level(logging.INFO, logger="test.quiet_progress"):
        with DownloadProgress(tmp_path, total_shards=2, total_rows=8, interval_s=0.02, logger=logger):
            time.sleep(0.5)  # ~25 intervals without a finished shard
            _shard(tmp_path, "00000", [("success", None)] * 4)
            time.sleep(0.5)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # the first look, then the finished shard; no repeat at the end
    assert "0/2 shards" in lines[0] and lines[0].endswith("ETA n/a")
    assert "1/2 shards" in lines[1] and "4 samples this attempt (4 ok, 0 failed)" in lines[1]
    assert re.search(r"samples/s, ETA \d+s$", lines[1]), lines[1]
