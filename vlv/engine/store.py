"""The run store: content-addressed step outputs on a local folder or any fsspec URI (s3://, gs://).

Layout (relative to the store root):
    steps/<step>/<key>/manifest.json   published output; the manifest is written last
    .staging/<step>/<key>/             work in progress (local stores); never read as a result
    .locks/<step>-<key>.lock           one writer per step key (flock: released when its holder dies)
    scratch/<step>/<key>/              durable working space (training checkpoints), not published
    cache/                             shared caches (real-image FID statistics)

On a local store publishing is one `os.rename` of the staging folder, so a reader sees all or nothing. On an
object store files are uploaded first and the manifest last: an output without a manifest does not exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import fsspec

from vlv.engine.manifest import MANIFEST_NAME, Manifest
from vlv.paths import check_relative


class StoreLockedError(RuntimeError):
    """Another pipeline invocation is working on the same step key."""


class LockLostError(RuntimeError):
    """A step attempt outlived the run that claimed its key (e.g. its driver was killed) and was superseded."""


class RunStore:
    def __init__(self, uri: str):
        self.uri = uri.rstrip("/") or "/"
        self.fs, root = fsspec.core.url_to_fs(self.uri)
        self.is_local = self.fs.protocol in ("file", "local") or "file" in tuple(self.fs.protocol)
        self.root = str(Path(root).resolve()) if self.is_local else root.rstrip("/")
        if self.is_local:
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"RunStore({self.uri!r})"

    # -- locations -----------------------------------------------------------------------------------------

    def output_uri(self, step: str, key: str) -> str:
        self._check(step, key)
        if self.is_local:
            return os.path.join(self.root, "steps", step, key)
        return f"{self.fs.unstrip_protocol(self.root)}/steps/{step}/{key}"

    def scratch_uri(self, step: str, key: str) -> str:
        """Durable working space of one step key (e.g. training checkpoints), never part of its output."""
        self._check(step, key)
        if self.is_local:
            return os.path.join(self.root, "scratch", step, key)
        return f"{self.fs.unstrip_protocol(self.root)}/scratch/{step}/{key}"

    @property
    def cache_dir(self) -> Path | None:
        return Path(self.root) / "cache" if self.is_local else None

    def staging_dir(self, step: str, key: str) -> Path:
        """A local folder for a step attempt; stable per key so a resumable step can continue after a crash."""
        self._check(step, key)
        if self.is_local:
            return Path(self.root) / ".staging" / step / key
        store_id = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        base = Path(os.environ.get("VLV_STAGING_DIR", Path(tempfile.gettempdir()) / "vlv-staging"))
        return base / store_id / step / key

    @property
    def local_root(self) -> Path:
        if not self.is_local:
            raise ValueError(f"store {self.uri} is not a local folder")
        return Path(self.root)

    # -- reading -------------------------------------------------------------------------------------------

    def read_manifest(self, step: str, key: str) -> Manifest | None:
        self._check(step, key)
        path = self._path(step, key, MANIFEST_NAME)
        try:
            with self.fs.open(path, "r") as handle:
                return Manifest.from_json(handle.read())
        except FileNotFoundError:
            return None

    def is_published(self, step: str, key: str) -> bool:
        return self.read_manifest(step, key) is not None

    def published_keys(self, step: str) -> list[str]:
        self._check(step)
        folder = self._join("steps", step)
        if not self.fs.exists(folder):
            return []
        keys = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)]
        return sorted(k for k in keys if self.fs.exists(self._path(step, k, MANIFEST_NAME)))

    # -- writing -------------------------------------------------------------------------------------------

    def prepare_staging(self, step: str, key: str, keep_existing: bool) -> Path:
        staging = self.staging_dir(step, key)
        if staging.exists() and not keep_existing:
            shutil.rmtree(staging)
        staging.mkdir(parents=True, exist_ok=True)
        (staging / MANIFEST_NAME).unlink(missing_ok=True)
        return staging

    def publish(self, staging: Path, manifest: Manifest) -> str:
        """Make `staging` the output of (manifest.step, manifest.key), replacing an older one if forced."""
        step, key = manifest.step, manifest.key
        final = self.output_uri(step, key)
        if self.is_local:
            (staging / MANIFEST_NAME).write_text(manifest.to_json())
            final_path = Path(final)
            final_path.parent.mkdir(parents=True, exist_ok=True)
            trash = None
            if final_path.exists():
                # Out of steps/ (same filesystem): a crash right here leaves no stray folder among the outputs.
                trash = Path(self.root) / ".staging" / ".replaced" / f"{step}-{key}-{uuid.uuid4().hex[:8]}"
                trash.parent.mkdir(parents=True, exist_ok=True)
                os.rename(final_path, trash)
            os.rename(staging, final_path)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
            return final
        remote = self._join("steps", step, key)
        if self.fs.exists(remote):
            self.fs.rm(remote, recursive=True)
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            self.fs.put_file(str(path), f"{remote}/{path.relative_to(staging).as_posix()}")
        with self.fs.open(f"{remote}/{MANIFEST_NAME}", "w") as handle:
            handle.write(manifest.to_json())
        shutil.rmtree(staging, ignore_errors=True)
        return final

    def unpublish(self, step: str, key: str) -> None:
        """Remove a published output (e.g. one found corrupt), so the next run makes it again."""
        self._check(step, key)
        path = self._join("steps", step, key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    @contextlib.contextmanager
    def lock(self, step: str, key: str, owner: str) -> Iterator[str | None]:
        """Exclusive claim on a step key; yields a token that `check_lock` compares before publishing.

        The claim is an advisory `flock` on `.locks/<step>-<key>.lock`, so the kernel drops it the moment its
        holder dies, even by SIGKILL: a crashed run's lock file is taken over without any pid guessing. The
        file holds who has it (run, pid, host, token) for the refusal message and for `check_lock`.
        """
        self._check(step, key)
        if not self.is_local:
            yield None  # object stores have no atomic create; a cluster runs one driver per pipeline
            return
        path = self._lock_path(step, key)
        token = uuid.uuid4().hex
        fd = _acquire_flock(path, blocking=False)
        if fd is None:
            holder = _read_lock(path)
            raise StoreLockedError(
                f"step '{step}' (key {key}) is being produced by {_describe_holder(holder)} in store {self.uri}; "
                f"wait for it to finish and rerun (the step will then be cached), or stop that run first"
            )
        record = {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                  "token": token}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        try:
            yield token
        finally:
            path.unlink(missing_ok=True)  # while still holding it: a waiter re-checks the inode (_acquire_flock)
            os.close(fd)

    def check_lock(self, step: str, key: str, token: str | None) -> None:
        """Raise LockLostError unless the lock of this step key still carries `token`.

        Called by a step attempt just before it publishes: an attempt orphaned by a killed driver, whose key a
        newer run has since claimed, must not replace that run's work.
        """
        self._check(step, key)
        if token is None or not self.is_local:
            return
        path = self._lock_path(step, key)
        holder = _read_lock(path)
        if not holder or holder.get("token") != token:
            raise LockLostError(
                f"step '{step}' (key {key}): this attempt no longer holds the step's lock (now: "
                f"{_describe_holder(holder)}); its output is not published"
            )
        if not _flock_is_held(path):  # the record is ours, but the kernel dropped the claim: its run died
            raise LockLostError(
                f"step '{step}' (key {key}): the run that claimed this step ({_describe_holder(holder)}) is gone; "
                f"this orphaned attempt's output is not published (rerun the pipeline to produce it)"
            )

    @contextlib.contextmanager
    def mutex(self, name: str) -> Iterator[None]:
        """A short blocking critical section shared by every invocation on this store (e.g. MLflow DB setup)."""
        if not self.is_local:
            yield
            return
        fd = _acquire_flock(Path(self.root) / ".locks" / f"{name}.mutex", blocking=True)
        assert fd is not None, "a blocking flock returns only when held"
        try:
            yield
        finally:
            os.close(fd)  # the file stays: unlinking would let a waiter lock an orphaned inode

    def _lock_path(self, step: str, key: str) -> Path:
        return Path(self.root) / ".locks" / f"{step}-{key}.lock"

    # -- helpers -------------------------------------------------------------------------------------------

    def _check(self, step: str, key: str | None = None) -> None:
        """Step names and keys become folder names: refuse any that would leave the store (vlv.paths)."""
        check_relative(step, self.uri, "step name", single=True)
        if key is not None:
            check_relative(key, self.uri, f"key of step {step}", single=True)

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _path(self, step: str, key: str, name: str) -> str:
        return self._join("steps", step, key, name)


def _acquire_flock(path: Path, blocking: bool) -> int | None:
    """An open fd holding an exclusive flock on `path`, or None if another process holds it (non-blocking).

    The holder unlinks the file when done; a process that opened the old file before that would lock an
    inode nobody else can see, so after locking we check the path still names our inode, else retry.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _flock_is_held(path: Path) -> bool:
    """True while some process holds the flock on `path`; probing takes and at once drops it otherwise."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _describe_holder(holder: dict | None) -> str:
    if not holder:
        return "another run"
    return f"run {holder.get('owner')} (pid {holder.get('pid')} on {holder.get('host')})"
