"""What img2dataset did: counts by status and error reason, from its per-shard files, and progress lines.

A shard is finished when its `NNNNN_stats.json` exists (img2dataset writes it last, and its incremental mode
uses the same test). The stats file has the totals; the status of each error message (failed_to_download or
failed_to_resize) comes from the shard's parquet, which has one row per sample.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from vlv.engine.progress_board import is_bar_mode, publish
from vlv.engine.storage import filesystem
from vlv.progress import format_duration

SUCCESS = "success"


@dataclass(frozen=True)
class ShardStats:
    shard: str
    count: int
    successes: int
    failed_to_download: int
    failed_to_resize: int
    end_time: float


@dataclass
class DownloadCounts:
    shards: list[ShardStats] = field(default_factory=list)
    # (status, short reason) -> samples; reason "" for successes
    by_status_reason: Counter = field(default_factory=Counter)
    # short reason -> the first full error message seen with it (for the log and the CSV)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def images_ok(self) -> int:
        return sum(s.successes for s in self.shards)

    @property
    def images_failed(self) -> int:
        return sum(s.failed_to_download + s.failed_to_resize for s in self.shards)

    @property
    def samples(self) -> int:
        return sum(s.count for s in self.shards)

    def failed_by_reason(self) -> dict[str, int]:
        totals: Counter = Counter()
        for (status, reason), count in self.by_status_reason.items():
            if status != SUCCESS:
                totals[reason] += count
        return dict(sorted(totals.items()))

    def csv_rows(self) -> list[tuple[str, str, int, str]]:
        """(status, error_reason, count, example_message), most frequent first."""
        ordered = sorted(self.by_status_reason.items(), key=lambda item: (-item[1], item[0]))
        return [(status, reason, count, self.examples.get(reason, "")) for (status, reason), count in ordered]


_REASON_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"HTTP Error (\d{3})", r"http_\1"),
    (r"X-Robots-Tag", "opt_out"),
    (r"timed? ?out", "timeout"),
    (r"Image decoding error", "decode_error"),
    (r"image area too large|CV_IO_MAX_IMAGE_PIXELS", "image_too_large"),  # a decompression bomb, or just huge
    (r"!buf\.empty\(\)", "empty_file"),  # OpenCV's assertion on a zero-byte body
    (r"Connection refused", "connection_refused"),
    (r"Connection reset", "connection_reset"),
    (r"Name or service not known|getaddrinfo|nodename nor servname", "dns_error"),
    (r"CERTIFICATE|SSL", "ssl_error"),
    (r"hash mismatch", "hash_mismatch"),
)


def short_reason(message: str | None) -> str:
    """A short, metric-name-safe reason for an img2dataset error message ('' for success)."""
    if not message or message == SUCCESS:
        return ""
    for pattern, replacement in _REASON_PATTERNS:
        found = re.search(pattern, message, flags=re.IGNORECASE)
        if found:
            return found.expand(replacement)
    cleaned = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")
    return cleaned[:40].rstrip("_") or "unknown"


def _stats_files(shards_uri: str | Path) -> tuple[Any, list[str]]:
    """(filesystem, sorted paths of the finished shards' `NNNNN_stats.json`) of a local or remote shards folder."""
    fs, root = filesystem(str(shards_uri))
    fs.invalidate_cache(root)
    try:
        names = fs.ls(root, detail=False)
    except FileNotFoundError:
        return fs, []
    return fs, sorted(n for n in names if n.endswith("_stats.json"))


def _shard_name(stats_path: str) -> str:
    return stats_path.rstrip("/").rsplit("/", 1)[-1].removesuffix("_stats.json")


def finished_shard_names(shards_uri: str | Path) -> list[str]:
    return [_shard_name(p) for p in _stats_files(shards_uri)[1]]


def read_shard_stats(fs: Any, path: str) -> ShardStats:
    with fs.open(path, "rb") as handle:
        data = json.loads(handle.read())
    return ShardStats(shard=_shard_name(path), count=int(data["count"]),
                      successes=int(data["successes"]), failed_to_download=int(data["failed_to_download"]),
                      failed_to_resize=int(data["failed_to_resize"]), end_time=float(data.get("end_time", 0.0)))


def read_download_counts(shards_uri: str | Path) -> DownloadCounts:
    """Counts of a shards folder (local path or store URI): per shard stats, per sample status and reason."""
    counts = DownloadCounts()
    fs, stats_paths = _stats_files(shards_uri)
    for stats_path in stats_paths:
        stats = read_shard_stats(fs, stats_path)
        counts.shards.append(stats)
        parquet_path = stats_path.removesuffix("_stats.json") + ".parquet"
        if fs.exists(parquet_path):
            with fs.open(parquet_path, "rb") as handle:
                table = pq.read_table(handle, columns=["status", "error_message"])
            pairs = zip(table.column("status").to_pylist(), table.column("error_message").to_pylist())
        else:  # no per-sample file: the stats' own status dictionary, without download/resize split
            with fs.open(stats_path, "rb") as handle:
                status_dict = json.loads(handle.read())["status_dict"]
            pairs = ((SUCCESS if message == SUCCESS else "failed", message)
                     for message, n in status_dict.items() for _ in range(int(n)))
        for status, message in pairs:
            reason = "" if status == SUCCESS else short_reason(message)
            counts.by_status_reason[(status or "unknown", reason)] += 1
            if reason and reason not in counts.examples:
                counts.examples[reason] = str(message)
    return counts


HEARTBEAT_S = 60.0
BAR_TICK_S = 2.0  # how often the counts go to the live status line on a terminal (a store listing each time)


class DownloadProgress:
    """A thread that logs shards finished, images ok/failed, the rate and an ETA every `interval_s` seconds
    (when a shard finished since the last line, or at least once a minute)."""

    def __init__(self, shards_uri: str | Path, total_shards: int, total_rows: int, interval_s: float,
                 logger: logging.Logger):
        self.shards_uri, self.total_shards, self.total_rows = str(shards_uri), total_shards, total_rows
        self.interval_s, self.log = interval_s, logger
        self._seen: dict[str, ShardStats] = {}
        self._already_done = set(finished_shard_names(self.shards_uri))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="download-progress", daemon=True)
        self._started = time.time()
        self._reported_shards, self._reported_at = -1, 0.0

    def __enter__(self) -> DownloadProgress:
        if self._already_done:
            self.log.info("download: %d of %d shards already finished by an earlier attempt; continuing",
                          len(self._already_done), self.total_shards)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.report(only_if_changed=True)  # the final count, unless the last line already said it

    def _loop(self) -> None:
        # On a terminal the status line wants counts every second or two; the log line keeps its own pace.
        tick = min(self.interval_s, BAR_TICK_S) if is_bar_mode() else self.interval_s
        last_line = time.monotonic()
        while not self._stop.wait(tick):
            line_due = time.monotonic() - last_line >= self.interval_s - 1e-3
            if line_due:
                last_line = time.monotonic()
            self.report(only_if_changed=True, line_due=line_due)

    def report(self, only_if_changed: bool = False, line_due: bool = True) -> None:
        """One progress line; `only_if_changed`: skipped when no shard finished since the last line, unless
        HEARTBEAT_S passed (a slow start prints one line a minute, not one per interval). The counts also go to the
        live status line on a terminal, which then shows them instead (the line goes to DEBUG)."""
        fs, stats_paths = _stats_files(self.shards_uri)
        for path in stats_paths:
            name = _shard_name(path)
            if name not in self._seen:
                try:
                    self._seen[name] = read_shard_stats(fs, path)
                except (OSError, ValueError, KeyError):
                    continue  # being written; next time
        new = [s for name, s in self._seen.items() if name not in self._already_done]
        now = time.time()
        counted = sum(s.count for s in self._seen.values())  # samples in finished shards, earlier attempts included
        done = sum(s.count for s in new)  # this attempt's
        on_status_line = publish("download", counted, self.total_rows, "samples", now - self._started,
                                 done_before=counted - done)
        if not line_due:
            return
        if only_if_changed and len(self._seen) == self._reported_shards and now - self._reported_at < HEARTBEAT_S:
            return
        self._reported_shards, self._reported_at = len(self._seen), now
        elapsed = max(now - self._started, 1e-9)
        ok = sum(s.successes for s in new)
        rate = done / elapsed
        remaining = max(self.total_rows - counted, 0)
        eta = "done" if not remaining else f"ETA {format_duration(remaining / rate)}" if rate > 0 else "ETA n/a"
        self.log.log(logging.DEBUG if on_status_line else logging.INFO,
                     "download: %d/%d shards after %.0fs, %d samples this attempt (%d ok, %d failed), %.1f samples/s, "
                     "%s", len(self._seen), self.total_shards, elapsed, done, ok, done - ok, rate, eta)
