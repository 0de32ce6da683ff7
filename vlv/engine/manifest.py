"""The manifest published with every step output: the proof that the output is complete.

An output folder counts as done only when its `manifest.json` exists, and the manifest is written last; it
lists every file with size and sha256 so a later reader can detect a truncated or corrupted file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vlv.engine.storage import filesystem

MANIFEST_NAME = "manifest.json"
_CHUNK = 4 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    step: str
    key: str
    code_version: str
    config: dict[str, Any]
    upstream: dict[str, str]
    files: tuple[FileEntry, ...]
    metrics: dict[str, float]
    artifacts: tuple[str, ...] = ()
    created_at: str = ""
    duration_s: float = 0.0
    mlflow_run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Where the files are, relative to the step key's folder: "" (a local store: the folder itself) or
    # "attempts/<id>" (an object store: one committed attempt).
    data_path: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        data["files"] = tuple(FileEntry(**f) for f in data["files"])
        data["artifacts"] = tuple(data.get("artifacts", ()))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"manifest of step {data.get('step')!r} has unknown fields {unknown}: it was written by "
                             f"a newer version of this project")
        return cls(**data)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(folder: Path) -> tuple[FileEntry, ...]:
    """Every regular file under `folder` (except the manifest), sorted, with size and checksum."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST_NAME:
            continue
        entries.append(FileEntry(path=rel, size=path.stat().st_size, sha256=sha256_file(path)))
    return tuple(entries)


def sha256_stream(handle: Any) -> str:
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def verify_files(folder: str | Path, manifest: Manifest, checksums: bool = True) -> list[str]:
    """Problems found comparing an output folder (local path or store URI) with its manifest (empty = intact).

    `checksums=False` checks presence and sizes only: cheap enough to run on every input before a step, and
    it catches a truncated or missing file, but not a same-size corruption (a flipped bit): only checksums do.
    On an object store the sizes come from one listing and checksums stream each file. Each problem names the
    file and the check that found it.
    """
    fs, root = filesystem(str(folder))
    root = root.rstrip("/")
    try:
        listed = {info["name"].rstrip("/"): int(info.get("size") or 0)
                  for info in fs.find(root, detail=True).values() if info.get("type") != "directory"}
    except FileNotFoundError:
        listed = {}
    strip = fs._strip_protocol  # listing names come back without the protocol
    problems = []
    for entry in manifest.files:
        path = f"{root}/{entry.path}"
        shown = f"{str(folder).rstrip('/')}/{entry.path}"
        size = listed.get(strip(path))
        if size is None:
            problems.append(f"{shown}: missing")
        elif size != entry.size:
            problems.append(f"{shown}: size {size} != {entry.size} in the manifest "
                            f"(truncated or overwritten; found by the size check)")
        elif checksums:
            with fs.open(path, "rb") as handle:
                digest = sha256_stream(handle)
            if digest != entry.sha256:
                problems.append(f"{shown}: same size but sha256 differs from the manifest (corrupted in place; "
                                f"found by the checksum check)")
    return problems
