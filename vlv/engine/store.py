"""The run store: content-addressed step outputs on a local folder or an object store (s3://, gs://).

Local layout (relative to the store root):
    steps/<step>/<key>/manifest.json       published output; the manifest is written last, the folder renamed in
    .staging/<step>/<key>/                 work in progress; never read as a result
    .locks/<step>-<key>.lock               one writer per step key (flock: released when its holder dies)
Object-store layout (no rename, no flock there):
    steps/<step>/<key>/attempts/<id>/...   the files of one attempt, uploaded (or written) before any commit
    steps/<step>/<key>/commits/<n>.json    the manifests; the highest n is the output. Each is created with an
                                           exclusive create, so two committers never both win, and a commit only
                                           names files that were complete before it was written
    .locks/<step>-<key>/<epoch>.json       a lease renewed while the step runs (vlv.engine.lease)
Both:
    scratch/<step>/<key>/                  durable working space (training checkpoints), not published
    cache/                                 shared caches (real-image FID statistics, VQA answers)

`--force` on an object store uploads a new attempt and commits it as n + 1: the previous output stays readable
until then. Attempts no commit names (and all but the previous committed one) are deleted after a commit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from vlv.engine.lease import Lease, LeaseKeeper, LockLostError, StoreLockedError, lease_ttl
from vlv.engine.manifest import MANIFEST_NAME, FileEntry, Manifest, list_files, sha256_stream
from vlv.engine.step_output import StepOutput
from vlv.engine.storage import StoreAccessError, create_exclusive, describe_store_error, filesystem, is_remote
from vlv.paths import check_relative

__all__ = ["Attempt", "LockLostError", "RunStore", "StoreLockedError"]

COMMITS = "commits"
ATTEMPTS = "attempts"


@dataclass(frozen=True)
class Attempt:
    """One try at producing a step key: a local folder to write into, and where its files will live."""

    step: str
    key: str
    attempt_id: str
    local_dir: Path  # the step writes small files here (uploaded at commit on an object store)
    data_uri: str  # the attempt's place in the store; large or resumable files may be written there directly


class RunStore:
    def __init__(self, uri: str, *, create: bool = True):
        self.uri = uri.rstrip("/") or "/"
        self.is_local = not is_remote(self.uri)
        self.fs, root = filesystem(self.uri)
        self.root = str(Path(root).resolve()) if self.is_local else root.rstrip("/")
        if self.is_local and create:
            try:
                Path(self.root).mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreAccessError(f"store {self.uri} cannot be created: {err.strerror or err} (pick a "
                                       f"folder you can write, e.g. --store ./vlv_runs)") from None

    def __repr__(self) -> str:
        return f"RunStore({self.uri!r})"

    def check_access(self, write: bool = True) -> None:
        """One round trip to the store; a clear StoreAccessError (endpoint, bucket, credentials) if it fails."""
        if self.is_local:
            if write and not os.access(self.root, os.W_OK):
                raise StoreAccessError(f"store {self.uri} is not writable by this user; pick another --store")
            return
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.invalidate_cache()
            self.fs.ls(bucket, detail=False)
        except FileNotFoundError as err:
            raise StoreAccessError(describe_store_error(self.uri, RuntimeError(f"NoSuchBucket: {err}"))) from None
        except Exception as err:  # noqa: BLE001 - botocore/aiohttp errors come in many types; each is described
            raise StoreAccessError(describe_store_error(self.uri, err)) from None
        if not write:
            return
        try:
            self.fs.pipe_file(self._join(".vlv-store"), b"vlv run store\n")  # can we write, not only list?
        except Exception as err:  # noqa: BLE001
            raise StoreAccessError(describe_store_error(self.uri, err)) from None

    # -- locations -----------------------------------------------------------------------------------------

    def output_uri(self, step: str, key: str) -> str:
        """The step key's folder: the output itself on a local store, its commits and attempts on an object store."""
        self._check(step, key)
        if self.is_local:
            return os.path.join(self.root, "steps", step, key)
        return self._uri("steps", step, key)

    def scratch_uri(self, step: str, key: str) -> str:
        """Durable working space of one step key (e.g. training checkpoints), never part of its output."""
        self._check(step, key)
        if self.is_local:
            return os.path.join(self.root, "scratch", step, key)
        return self._uri("scratch", step, key)

    @property
    def cache_uri(self) -> str:
        """A folder shared across keys (FID statistics of real images, VQA answers), in the store."""
        return os.path.join(self.root, "cache") if self.is_local else self._uri("cache")

    @property
    def cache_dir(self) -> Path | None:
        return Path(self.root) / "cache" if self.is_local else None

    def staging_dir(self, step: str, key: str) -> Path:
        """Local stores: the stable work folder of a step key (so a resumable step continues after a crash)."""
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
        if self.is_local:
            path = self._join("steps", step, key, MANIFEST_NAME)
            try:
                with self.fs.open(path, "r") as handle:
                    return Manifest.from_json(handle.read())
            except FileNotFoundError:
                return None
        commits = self._commit_numbers(step, key)
        if not commits:
            return None
        with self.fs.open(self._commit_path(step, key, commits[-1]), "r") as handle:
            return Manifest.from_json(handle.read())

    def output(self, step: str, key: str) -> StepOutput | None:
        """The published output of a step key, as its readers use it (None if there is none)."""
        manifest = self.read_manifest(step, key)
        if manifest is None:
            return None
        return StepOutput(step, key, self.data_uri(manifest), manifest)

    def data_uri(self, manifest: Manifest) -> str:
        folder = self.output_uri(manifest.step, manifest.key)
        if not manifest.data_path:
            return folder
        check_relative(manifest.data_path, folder, f"data_path of the manifest of {manifest.step}")
        return f"{folder}/{manifest.data_path}"

    def is_published(self, step: str, key: str) -> bool:
        if self.is_local:
            return self.read_manifest(step, key) is not None
        return bool(self._commit_numbers(step, key))

    def published_keys(self, step: str) -> list[str]:
        self._check(step)
        folder = self._join("steps", step)
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        keys = [p.rstrip("/").rsplit("/", 1)[-1] for p in names]
        return sorted(k for k in keys if self.is_published(step, k))

    def published_steps(self) -> list[str]:
        """Every step name with at least one folder under steps/ (published or not)."""
        try:
            names = self.fs.ls(self._join("steps"), detail=False)
        except FileNotFoundError:
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in names)

    # -- writing -------------------------------------------------------------------------------------------

    def begin_attempt(self, step: str, key: str, *, resume: bool) -> Attempt:
        """A fresh (or, with `resume`, the unfinished previous) attempt at a step key."""
        self._check(step, key)
        if self.is_local:
            staging = self.staging_dir(step, key)
            if staging.exists() and not resume:
                shutil.rmtree(staging)
            staging.mkdir(parents=True, exist_ok=True)
            (staging / MANIFEST_NAME).unlink(missing_ok=True)
            return Attempt(step, key, "staging", staging, str(staging))
        attempt_id = self._unfinished_attempt(step, key) if resume else None
        attempt_id = attempt_id or f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        data_uri = self._uri("steps", step, key, ATTEMPTS, attempt_id)
        local = self.staging_dir(step, key) / attempt_id
        if local.exists():
            shutil.rmtree(local)
        local.mkdir(parents=True)
        return Attempt(step, key, attempt_id, local, data_uri)

    def prepare_staging(self, step: str, key: str, keep_existing: bool) -> Path:
        """Local stores: the staging folder of a step key (kept for a resumable step). See `begin_attempt`."""
        if not self.is_local:
            raise ValueError(f"store {self.uri} is an object store: use begin_attempt/commit")
        return self.begin_attempt(step, key, resume=keep_existing).local_dir

    def attempt_files(self, attempt: Attempt) -> tuple[FileEntry, ...]:
        """Every file of the attempt with size and sha256; on an object store, uploads the local files first."""
        local_entries = list_files(attempt.local_dir)
        if self.is_local:
            return local_entries
        remote_root = self.fs._strip_protocol(attempt.data_uri)
        for entry in local_entries:
            self.fs.put_file(str(attempt.local_dir / entry.path), f"{remote_root}/{entry.path}")
        entries = {entry.path: entry for entry in local_entries}
        self.fs.invalidate_cache(remote_root)
        try:
            found = self.fs.find(remote_root, detail=True)
        except FileNotFoundError:
            found = {}
        for name, info in sorted(found.items()):
            relative = name[len(remote_root):].lstrip("/")
            if relative in entries or relative == MANIFEST_NAME or info.get("type") == "directory":
                continue
            with self.fs.open(name, "rb") as handle:  # written straight to the store by the step (e.g. shards)
                entries[relative] = FileEntry(relative, int(info["size"]), sha256_stream(handle))
        return tuple(entries[name] for name in sorted(entries))

    def commit(self, attempt: Attempt, manifest: Manifest) -> str:
        """Make the attempt the output of its step key (replacing an older one, if forced); returns its URI."""
        if self.is_local:
            return self._publish_local(attempt.local_dir, manifest)
        previous = self._commit_numbers(attempt.step, attempt.key)
        number = (previous[-1] + 1) if previous else 1
        committed = replace(manifest, data_path=f"{ATTEMPTS}/{attempt.attempt_id}")
        path = self._commit_path(attempt.step, attempt.key, number)
        if not create_exclusive(self.fs, path, committed.to_json().encode()):
            raise LockLostError(f"step '{attempt.step}' (key {attempt.key}): another run committed this key at the "
                                f"same moment; this attempt's output is not published")
        shutil.rmtree(attempt.local_dir, ignore_errors=True)
        self._collect_garbage(attempt.step, attempt.key)
        return attempt.data_uri

    def publish(self, staging: Path, manifest: Manifest) -> str:
        """Local stores: make `staging` the output (see `commit`)."""
        if not self.is_local:
            raise ValueError(f"store {self.uri} is an object store: use begin_attempt/commit")
        return self._publish_local(staging, manifest)

    def discard_partial_work(self, step: str, key: str) -> None:
        """Forget what earlier attempts left for this key (checkpoints in scratch, a staging folder, uncommitted
        attempts), so a forced rerun starts afresh; the published output stays until the new one commits."""
        self._check(step, key)
        scratch = self._join("scratch", step, key)
        if self.fs.exists(scratch):
            self.fs.rm(scratch, recursive=True)
        staging = self.staging_dir(step, key)
        if staging.exists():
            shutil.rmtree(staging)
        if not self.is_local:
            committed = self._committed_attempts(step, key, self._commit_numbers(step, key))
            for attempt_id in self._attempt_ids(step, key):
                if attempt_id not in committed:
                    self.fs.rm(self._join("steps", step, key, ATTEMPTS, attempt_id), recursive=True)

    def unpublish(self, step: str, key: str) -> None:
        """Remove a published output (e.g. one found corrupt), so the next run makes it again."""
        self._check(step, key)
        path = self._join("steps", step, key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # -- claims ------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, step: str, key: str, owner: str) -> Iterator[str]:
        """Exclusive claim on a step key; yields a token that `check_lock` compares before publishing.

        Local: an advisory `flock` on `.locks/<step>-<key>.lock`, dropped by the kernel the moment its holder
        dies, even by SIGKILL. Object store: a lease renewed while the block runs (vlv.engine.lease).
        """
        self._check(step, key)
        if not self.is_local:
            lease = self._lease(step, key)
            record = lease.acquire(owner, lease_ttl())
            with LeaseKeeper(lease, record):
                yield record.token
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
        """Raise LockLostError unless this step key's claim still carries `token` (the fencing check).

        Called by a step attempt just before it publishes: an attempt orphaned by a killed driver, whose key a
        newer run has since claimed (or whose claim lapsed), must not replace that run's work.
        """
        self._check(step, key)
        if token is None:
            return
        if not self.is_local:
            self._lease(step, key).check(token)
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
            yield  # object stores hold no database: MLflow lives in a tracking server there
            return
        fd = _acquire_flock(Path(self.root) / ".locks" / f"{name}.mutex", blocking=True)
        assert fd is not None, "a blocking flock returns only when held"
        try:
            yield
        finally:
            os.close(fd)  # the file stays: unlinking would let a waiter lock an orphaned inode

    # -- helpers -----------------------------------------------------------------------------------------------

    def _publish_local(self, staging: Path, manifest: Manifest) -> str:
        step, key = manifest.step, manifest.key
        final = Path(self.output_uri(step, key))
        (staging / MANIFEST_NAME).write_text(manifest.to_json())
        final.parent.mkdir(parents=True, exist_ok=True)
        trash = None
        if final.exists():
            # Out of steps/ (same filesystem): a crash right here leaves no stray folder among the outputs.
            trash = Path(self.root) / ".staging" / ".replaced" / f"{step}-{key}-{uuid.uuid4().hex[:8]}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(final, trash)
        os.rename(staging, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return str(final)

    def _commit_numbers(self, step: str, key: str) -> list[int]:
        folder = self._join("steps", step, key, COMMITS)
        self.fs.invalidate_cache(folder)
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        numbers = []
        for name in names:
            base = name.rstrip("/").rsplit("/", 1)[-1]
            if base.endswith(".json") and base[:-5].isdigit():
                numbers.append(int(base[:-5]))
        return sorted(numbers)

    def _commit_path(self, step: str, key: str, number: int) -> str:
        return self._join("steps", step, key, COMMITS, f"{number:06d}.json")

    def _committed_attempts(self, step: str, key: str, numbers: list[int]) -> set[str]:
        found = set()
        for number in numbers:
            try:
                with self.fs.open(self._commit_path(step, key, number), "r") as handle:
                    found.add(Manifest.from_json(handle.read()).data_path.rsplit("/", 1)[-1])
            except FileNotFoundError:
                continue
        return found

    def _attempt_ids(self, step: str, key: str) -> list[str]:
        folder = self._join("steps", step, key, ATTEMPTS)
        self.fs.invalidate_cache(folder)
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False))
        except FileNotFoundError:
            return []

    def _unfinished_attempt(self, step: str, key: str) -> str | None:
        """The newest attempt no commit names: a crashed try whose partial files a resumable step continues."""
        committed = self._committed_attempts(step, key, self._commit_numbers(step, key))
        unfinished = [a for a in self._attempt_ids(step, key) if a not in committed]
        return unfinished[-1] if unfinished else None

    def _collect_garbage(self, step: str, key: str) -> None:
        """Keep the current and the previous commit (a reader may still be on it) and their attempts only."""
        numbers = self._commit_numbers(step, key)
        keep = numbers[-2:]
        wanted = self._committed_attempts(step, key, keep)
        for number in numbers[:-2]:
            self.fs.rm_file(self._commit_path(step, key, number))
        for attempt_id in self._attempt_ids(step, key):
            if attempt_id not in wanted:
                self.fs.rm(self._join("steps", step, key, ATTEMPTS, attempt_id), recursive=True)

    def _lease(self, step: str, key: str) -> Lease:
        return Lease(self.fs, self._join(".locks", f"{step}-{key}"), f"step '{step}' (key {key})", self.uri)

    def _lock_path(self, step: str, key: str) -> Path:
        return Path(self.root) / ".locks" / f"{step}-{key}.lock"

    def _check(self, step: str, key: str | None = None) -> None:
        """Step names and keys become folder names: refuse any that would leave the store (vlv.paths)."""
        check_relative(step, self.uri, "step name", single=True)
        if key is not None:
            check_relative(key, self.uri, f"key of step {step}", single=True)

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _uri(self, *parts: str) -> str:
        return "/".join([self.fs.unstrip_protocol(self.root).rstrip("/"), *parts])


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
