"""A lock for object stores: a lease that expires unless its holder renews it, with a fencing epoch.

Object stores have no `flock`, and a killed driver cannot release anything, so the claim on a step key is a
lease: `.locks/<step>-<key>/<epoch>.json` objects, created only with an exclusive create (the single primitive
S3 `If-None-Match: *`, GCS `ifGenerationMatch=0` and local `O_EXCL` all offer). The highest epoch is the
current lease; its holder rewrites its own file every `ttl / 4` seconds while the step runs.

- Take: no epoch yet, or the highest one released or expired (not renewed for `ttl` seconds by the store's
  clock, or its holder is a dead process of this very host) -> create epoch + 1. Two runs racing create the
  same name; the store lets exactly one succeed.
- Refuse: the highest epoch is held and fresh -> `StoreLockedError` naming the holder.
- Fence: just before publishing, the attempt checks the highest epoch is still its own and fresh; a run whose
  lease lapsed (a stalled driver) finds a newer epoch and publishes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from vlv.engine.storage import create_exclusive, modified_time

log = logging.getLogger("vlv.lease")

DEFAULT_TTL_S = 120.0


class StoreLockedError(RuntimeError):
    """Another pipeline invocation is working on the same step key."""


class LockLostError(RuntimeError):
    """A step attempt outlived the run that claimed its key (e.g. its driver was killed) and was superseded."""


@dataclass
class LeaseRecord:
    owner: str
    token: str
    pid: int
    host: str
    ttl_s: float
    renewed_at: float  # the holder's clock; the store's own modification time is preferred when it has one
    released: bool = False

    def describe(self) -> str:
        return f"run {self.owner} (pid {self.pid} on {self.host})"


def lease_ttl() -> float:
    """`VLV_LEASE_TTL_S` (seconds), else two minutes: how long a silent holder keeps its claim."""
    try:
        return float(os.environ.get("VLV_LEASE_TTL_S", DEFAULT_TTL_S))
    except ValueError:
        raise ValueError(f"VLV_LEASE_TTL_S must be a number of seconds, got {os.environ['VLV_LEASE_TTL_S']!r}") \
            from None


class Lease:
    """The lease files of one step key in one store (`folder` is a path on `fs`)."""

    def __init__(self, fs: Any, folder: str, what: str, store_uri: str):
        self.fs = fs
        self.folder = folder.rstrip("/")
        self.what = what  # "step 'x' (key k)", for messages
        self.store_uri = store_uri
        self._held: dict[str, int] = {}  # token -> epoch of the leases this object acquired (saves a search)

    # -- reading -----------------------------------------------------------------------------------------

    def epochs(self) -> list[int]:
        try:
            names = self.fs.ls(self.folder, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            base = name.rstrip("/").rsplit("/", 1)[-1]
            if base.endswith(".json") and base[:-5].isdigit():
                found.append(int(base[:-5]))
        return sorted(found)

    def read(self, epoch: int) -> tuple[LeaseRecord | None, float | None]:
        """(record, the store's modification time) of one epoch; (None, None) if it vanished or is unreadable."""
        path = self._path(epoch)
        try:
            self.fs.invalidate_cache(path)  # listings are not cached by vlv.engine.storage; any other fs may
            info = self.fs.info(path)
            record = LeaseRecord(**json.loads(self.fs.cat_file(path)))
        except (FileNotFoundError, ValueError, TypeError):
            return None, None
        stamped = modified_time(info)
        if stamped is not None and stamped.is_integer():
            stamped += 1.0  # S3 gives whole seconds: the write was up to a second later; never expire it early
        return record, stamped

    def is_live(self, record: LeaseRecord, stamped_at: float | None) -> bool:
        if record.released:
            return False
        if record.host == socket.gethostname() and not _pid_alive(record.pid):
            return False  # its driver died on this very machine: no need to wait for the expiry
        last = stamped_at if stamped_at is not None else record.renewed_at
        return time.time() - last < record.ttl_s

    # -- taking and keeping ------------------------------------------------------------------------------

    def acquire(self, owner: str, ttl_s: float) -> LeaseRecord:
        for _ in range(5):
            epochs = self.epochs()
            current = epochs[-1] if epochs else 0
            if current:
                record, stamped = self.read(current)
                if record is not None and self.is_live(record, stamped):
                    left = record.ttl_s - (time.time() - (stamped or record.renewed_at))
                    raise StoreLockedError(
                        f"{self.what} is being produced by {record.describe()} in store {self.store_uri} "
                        f"(its lease expires in {max(left, 0):.0f}s unless renewed); wait for it to finish and "
                        f"rerun (the step will then be cached), or stop that run first"
                    )
            mine = LeaseRecord(owner=owner, token=uuid.uuid4().hex, pid=os.getpid(), host=socket.gethostname(),
                               ttl_s=ttl_s, renewed_at=time.time())
            if create_exclusive(self.fs, self._path(current + 1), json.dumps(asdict(mine)).encode()):
                self._held[mine.token] = current + 1
                self._prune(current + 1)
                return mine
            # someone created that epoch first: look again (they hold it now, or released it already)
        raise StoreLockedError(f"{self.what}: the lease in store {self.store_uri} keeps changing hands; retry")

    def renew(self, record: LeaseRecord) -> bool:
        """Rewrite our epoch file with a fresh time; False (and nothing written) if the lease is no longer ours."""
        epochs = self.epochs()
        epoch = self._epoch_of(record, epochs)
        if epoch is None or epochs[-1] != epoch:
            return False
        record.renewed_at = time.time()
        self.fs.pipe_file(self._path(epoch), json.dumps(asdict(record)).encode())
        return True

    def release(self, record: LeaseRecord) -> None:
        epoch = self._epoch_of(record, self.epochs())
        if epoch is None:
            return
        record.released = True
        try:
            self.fs.pipe_file(self._path(epoch), json.dumps(asdict(record)).encode())
        except OSError as err:  # the lease then simply expires
            log.warning("%s: could not release the lease: %s", self.what, err)

    def check(self, token: str) -> None:
        """The fencing check before a publish: LockLostError unless `token` holds the newest, fresh epoch."""
        epochs = self.epochs()
        record, stamped = self.read(epochs[-1]) if epochs else (None, None)
        if record is None or record.token != token:
            holder = record.describe() if record else "nobody"
            raise LockLostError(f"{self.what}: this attempt no longer holds the step's lease (now: {holder}); "
                                f"its output is not published")
        if not self.is_live(record, stamped):
            raise LockLostError(f"{self.what}: the lease of this attempt's run ({record.describe()}) lapsed; its "
                                f"output is not published (rerun the pipeline to produce it)")

    # -- helpers -----------------------------------------------------------------------------------------

    def _epoch_of(self, record: LeaseRecord, epochs: list[int]) -> int | None:
        """The epoch file holding `record` among the listed `epochs`, None if it is gone (pruned by newer holders)."""
        if record.token in self._held:
            held = self._held[record.token]
            return held if held in epochs else None
        for epoch in reversed(epochs):
            found, _ = self.read(epoch)
            if found is not None and found.token == record.token:
                return epoch
        return None

    def _path(self, epoch: int) -> str:
        return f"{self.folder}/{epoch:08d}.json"

    def _prune(self, newest: int) -> None:
        """Old epochs only matter as history; keep the one before ours for messages and forensics."""
        for epoch in self.epochs():
            if epoch < newest - 1:
                try:
                    self.fs.rm_file(self._path(epoch))
                except FileNotFoundError:
                    pass


class LeaseKeeper:
    """Renews a lease every `ttl / 4` seconds on a daemon thread while a step runs (a context manager)."""

    def __init__(self, lease: Lease, record: LeaseRecord):
        self.lease = lease
        self.record = record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"lease-{record.token[:8]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.lease.release(self.record)

    def _loop(self) -> None:
        while not self._stop.wait(self.record.ttl_s / 4):
            try:
                if not self.lease.renew(self.record):
                    log.warning("%s: the lease was taken over; this run's attempt will not publish", self.lease.what)
                    return
            except OSError as err:  # a transient store error: try again at the next tick
                log.warning("%s: renewing the lease failed (%s); retrying", self.lease.what, err)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
