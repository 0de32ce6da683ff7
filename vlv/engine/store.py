"""The run store: content-addressed step outputs on a local folder or any fsspec URI (s3://, gs://).

Layout (relative to the store root):
    steps/<step>/<key>/manifest.json   published output; the manifest is written last
    .staging/<step>/<key>/             work in progress (local stores); never read as a result
    .locks/<step>-<key>.lock           one writer per step key
    scratch/<step>/<key>/              durable working space (training checkpoints), not published
    cache/                             shared caches (real-image FID statistics)

On a local store publishing is one `os.rename` of the staging folder, so a reader sees all or nothing. On an
object store files are uploaded first and the manifest last: an output without a manifest does not exist.
"""

from __future__ import annotations

import contextlib
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


class StoreLockedError(RuntimeError):
    """Another pipeline invocation is working on the same step key."""


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
        if self.is_local:
            return os.path.join(self.root, "steps", step, key)
        return f"{self.fs.unstrip_protocol(self.root)}/steps/{step}/{key}"

    def scratch_uri(self, step: str, key: str) -> str:
        """Durable working space of one step key (e.g. training checkpoints), never part of its output."""
        if self.is_local:
            return os.path.join(self.root, "scratch", step, key)
        return f"{self.fs.unstrip_protocol(self.root)}/scratch/{step}/{key}"

    @property
    def cache_dir(self) -> Path | None:
        return Path(self.root) / "cache" if self.is_local else None

    def staging_dir(self, step: str, key: str) -> Path:
        """A local folder for a step attempt; stable per key so a resumable step can continue after a crash."""
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
        path = self._path(step, key, MANIFEST_NAME)
        try:
            with self.fs.open(path, "r") as handle:
                return Manifest.from_json(handle.read())
        except FileNotFoundError:
            return None

    def is_published(self, step: str, key: str) -> bool:
        return self.read_manifest(step, key) is not None

    def published_keys(self, step: str) -> list[str]:
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
                trash = final_path.with_name(f".{key}.replaced-{uuid.uuid4().hex[:8]}")
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
        path = self._join("steps", step, key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    @contextlib.contextmanager
    def lock(self, step: str, key: str, owner: str) -> Iterator[None]:
        """Exclusive claim on a step key; a stale lock (its process gone, same host) is taken over."""
        if not self.is_local:
            yield  # object stores have no atomic create; a cluster runs one driver per pipeline
            return
        lock_dir = Path(self.root) / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        path = lock_dir / f"{step}-{key}.lock"
        record = {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = _read_lock(path)
                if holder and _lock_is_stale(holder):
                    path.unlink(missing_ok=True)
                    continue
                who = f"run {holder.get('owner')} (pid {holder.get('pid')} on {holder.get('host')})" if holder \
                    else "another run"
                raise StoreLockedError(
                    f"step '{step}' (key {key}) is being produced by {who} in store {self.uri}; wait for it "
                    f"to finish, or if that process is gone remove {path}"
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle)
            break
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    # -- helpers -------------------------------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _path(self, step: str, key: str, name: str) -> str:
        return self._join("steps", step, key, name)


def _read_lock(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _lock_is_stale(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False
