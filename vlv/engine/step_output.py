"""A published step output as its readers see it: files named by the manifest, opened through the store.

Steps never build paths into another step's output. They name a file (ideally the producer's declared
`OutputFile`) and ask the `StepOutput` to open it, read it as a table, or make it local: a local store is read
in place; a remote one (s3://, gs://) is fetched once per node into a cache and checked against the manifest's
size and sha256. A `StepOutput` is a small picklable value, so it is what travels to Ray workers and actors on
other nodes, which then localise what they need where they run.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from vlv.engine.manifest import FileEntry, Manifest, list_files, sha256_file
from vlv.engine.storage import filesystem, is_remote, local_path_of, node_cache_root
from vlv.paths import check_relative


@dataclass(frozen=True)
class OutputFile:
    """A file (or folder, with a trailing '/') a step publishes; readers name it through this declaration."""

    path: str
    description: str
    schema: Any = None  # a pyarrow.Schema for parquet tables: checked when the step publishes
    required: bool = True  # False: written only in some configurations (e.g. the tiny preset's photo site)

    @property
    def is_folder(self) -> bool:
        return self.path.endswith("/")

    def __str__(self) -> str:
        return self.path.rstrip("/")


FileName = str | OutputFile


@dataclass(frozen=True)
class StepOutput:
    """A published step output: where its files live (`uri`, the data root) and what its manifest says."""

    step: str
    key: str
    uri: str
    manifest: Manifest

    # -- naming ------------------------------------------------------------------------------------------

    def path(self, relative: FileName) -> str:
        """URI (or local path) of one file or folder inside this output, e.g. to hand to pyarrow or Ray Data."""
        return f"{self.uri.rstrip('/')}/{_relative(relative, self.uri)}"

    def has(self, relative: FileName) -> bool:
        name = _relative(relative, self.uri)
        return any(entry.path == name or entry.path.startswith(name + "/") for entry in self.manifest.files)

    def files(self, under: FileName = "") -> list[FileEntry]:
        """The manifest's entries under a folder (all of them for ""), in path order."""
        prefix = _relative(under, self.uri) + "/" if str(under) else ""
        return [entry for entry in self.manifest.files if entry.path.startswith(prefix)]

    @property
    def is_remote(self) -> bool:
        return is_remote(self.uri)

    # -- reading -----------------------------------------------------------------------------------------

    def open(self, relative: FileName, mode: str = "rb") -> BinaryIO:
        if "r" not in mode:
            raise ValueError(f"outputs of published steps are read-only; cannot open {relative} with {mode!r}")
        fs, path = filesystem(self.path(relative))
        return fs.open(path, mode)

    def read_text(self, relative: FileName) -> str:
        with self.open(relative, "rb") as handle:
            return handle.read().decode("utf-8")

    def read_table(self, relative: FileName, columns: list[str] | None = None) -> Any:
        """A parquet file of this output as a pyarrow Table (streamed from the store, never fetched whole)."""
        import pyarrow.parquet as pq

        with self.open(relative) as handle:
            return pq.read_table(handle, columns=columns)

    def parquet_file(self, relative: FileName) -> Any:
        """A `pyarrow.parquet.ParquetFile` for batch-wise reading; the caller closes it."""
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.open(relative))

    # -- making local ------------------------------------------------------------------------------------

    def local_path(self, relative: FileName) -> Path:
        """A local copy of one file (the file itself on a local store), checked against the manifest."""
        name = _relative(relative, self.uri)
        if not self.is_remote:
            return Path(local_path_of(self.uri)) / name
        entry = next((e for e in self.manifest.files if e.path == name), None)
        if entry is None:
            raise ValueError(f"the output of '{self.step}' (key {self.key}) has no file {name}")
        return self._fetch(entry)

    @property
    def local_dir(self) -> Path:
        """The whole output as a local folder (`local_folder()`): for tools and tests reading it by path."""
        return self.local_folder()

    def local_folder(self, under: FileName = "") -> Path:
        """A local copy of a folder of this output (the whole output for ""), fetched once per node."""
        if not self.is_remote:
            folder = Path(local_path_of(self.uri))
            return folder / _relative(under, self.uri) if str(under) else folder
        entries = self.files(under)
        if not entries:
            raise ValueError(f"the output of '{self.step}' (key {self.key}) has no folder {under}")
        for entry in entries:
            self._fetch(entry)
        root = self._cache_root()
        return root / _relative(under, self.uri) if str(under) else root

    def _cache_root(self) -> Path:
        # The URI names one committed attempt, whose files never change: a safe cache key.
        return node_cache_root() / "outputs" / hashlib.sha256(self.uri.encode()).hexdigest()[:24]

    def _fetch(self, entry: FileEntry) -> Path:
        target = self._cache_root() / entry.path
        if target.is_file() and target.stat().st_size == entry.size:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fs, path = filesystem(self.path(entry.path))
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        try:
            fs.get_file(path, tmp)
            if Path(tmp).stat().st_size != entry.size or sha256_file(Path(tmp)) != entry.sha256:
                raise ValueError(f"{self.path(entry.path)} does not match its manifest (size or sha256); the "
                                 f"output of '{self.step}' is damaged: rerun it with --force {self.step}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target


def output_of_folder(step: str, key: str, folder: str | Path) -> StepOutput:
    """A local folder seen as a published output of `step` (its manifest listing every file): for tools and
    tests that hand existing files to a step or a task."""
    files = list_files(Path(folder))
    return StepOutput(step, key, str(folder), Manifest(step, key, "1", {}, {}, files, {}))


def _relative(relative: FileName, root: str) -> str:
    name = str(relative).strip("/")
    return check_relative(name, root, "file name in a step output") if name else ""
