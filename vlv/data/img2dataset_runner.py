"""One img2dataset 1.47 `download(...)` call, in this process or in a child process.

In-process is the normal path: it works inside a Ray task (checked by tests/steps/test_download.py), whose
worker runs tasks on its main thread, and img2dataset's multiprocessing distributor spawns its own pool.
img2dataset installs a SIGINT handler (signal.signal only works on the main thread) and leaves it installed,
so the caller's handler is put back afterwards. Off the main thread the call goes to a child process running
this module (`python -m vlv.data.img2dataset_runner JOB.json`), which has the `__main__` guard that the
spawn start method needs. img2dataset prints its own progress to stdout (a few lines per shard, from every
process of its pool); unless the run is verbose that goes to a temporary file, shown only if the download
fails, as the step logs its own progress with rate and ETA.

img2dataset writes samples in the order its threads finish, stamps tar members with the wall clock and shard
stats with start/end times, so two downloads of the same URLs differ byte for byte. `canonicalize_shards`
rewrites each finished shard in key order without timestamps: the same URLs and responses then give
bit-identical shards, whether the download ran in one go or was killed and resumed. Given a `UrlRewrite` it also
maps the `url` of every sample back to the URL the metadata holds (the tiny site is fetched from whatever port
serves it, and the shards must not depend on that port).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from vlv.engine.storage import filesystem
from vlv.logs import is_verbose

# Larger images are refused from their header, before decoding (vlv.data.img2dataset_resizer): PIL's own
# decompression-bomb threshold, about 13,400 x 13,400 pixels (537 MB decoded as RGB).
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
# Wall-clock fields of img2dataset's NNNNN_stats.json; the step's own duration is in its manifest and MLflow.
WALL_CLOCK_STATS = ("start_time", "end_time", "duration")


@dataclass(frozen=True)
class UrlRewrite:
    """Replace the first match of a regular expression (Python and Arrow's RE2 syntax alike) in each URL."""

    pattern: str
    replacement: str

    def apply(self, url: str) -> str:
        return re.sub(self.pattern, lambda _: self.replacement, url, count=1)

    def apply_arrow(self, urls):
        import pyarrow.compute as pc

        literal = self.replacement.replace("\\", "\\\\")  # RE2 reads \1 in a replacement as a group
        return pc.replace_substring_regex(urls, pattern=self.pattern, replacement=literal, max_replacements=1)


@dataclass(frozen=True)
class Img2DatasetJob:
    """The arguments of img2dataset.download that this project sets (names as img2dataset spells them)."""

    url_list: str
    output_folder: str
    image_size: int
    resize_mode: str
    encode_format: str
    encode_quality: int
    number_sample_per_shard: int
    processes_count: int
    thread_count: int
    timeout: int
    retries: int
    distributor: Literal["multiprocessing", "ray"]
    save_additional_columns: tuple[str, ...]
    respect_opt_out: bool = True
    max_image_area: int = DEFAULT_MAX_IMAGE_PIXELS
    url_col: str = "URL"
    caption_col: str = "TEXT"

    def download_kwargs(self) -> dict:
        kwargs = dataclasses.asdict(self)
        respect_opt_out = kwargs.pop("respect_opt_out")
        kwargs["save_additional_columns"] = list(self.save_additional_columns) or None
        # None = img2dataset's default directives (noai, noimageai, noindex, noimageindex); [] = no check.
        kwargs["disallowed_header_directives"] = None if respect_opt_out else []
        kwargs.update(input_format="parquet", output_format="webdataset", enable_wandb=False,
                      incremental_mode="incremental")  # never "overwrite": broken in 1.47, and it would
        return kwargs                                   # throw away the finished shards of a crashed attempt


def run_img2dataset(job: Img2DatasetJob, in_subprocess: bool | None = None) -> None:
    """Run the download; `in_subprocess=None` picks a child process only when not on the main thread."""
    if in_subprocess is None:
        in_subprocess = threading.current_thread() is not threading.main_thread()
    if in_subprocess:
        _run_in_child(job)
        return
    import importlib

    from img2dataset import download

    from vlv.data.img2dataset_resizer import GuardedResizer

    img2dataset_main = importlib.import_module("img2dataset.main")  # the module (`img2dataset.main` is a function)
    resizer_class = img2dataset_main.Resizer
    img2dataset_main.Resizer = GuardedResizer  # bomb and 16-bit guards: see vlv.data.img2dataset_resizer
    previous_handler = signal.getsignal(signal.SIGINT)
    try:
        with _stdout_aside(enabled=not is_verbose()):
            download(**job.download_kwargs())
    finally:
        img2dataset_main.Resizer = resizer_class
        signal.signal(signal.SIGINT, previous_handler)


@contextlib.contextmanager
def _stdout_aside(enabled: bool, shown_lines: int = 40) -> Iterator[None]:
    """Send this process's stdout (file descriptor 1, which the processes it starts inherit) to a temporary
    file for the block; if the block raises, print the file's last lines on stderr."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile("w+b") as aside:
        os.dup2(aside.fileno(), 1)
        try:
            yield
        except BaseException:
            sys.stdout.flush()
            os.dup2(saved, 1)
            aside.seek(0)
            tail = aside.read().decode(errors="replace").splitlines()[-shown_lines:]
            print("\n".join(["img2dataset's output (last lines):", *tail]), file=sys.stderr)
            raise
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _run_in_child(job: Img2DatasetJob) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(dataclasses.asdict(job), handle)
    try:
        completed = subprocess.run([sys.executable, "-m", "vlv.data.img2dataset_runner", handle.name],
                                   check=False)
    finally:
        Path(handle.name).unlink(missing_ok=True)
    if completed.returncode != 0:
        raise RuntimeError(f"img2dataset exited with status {completed.returncode} (see its output above); "
                           f"finished shards in {job.output_folder} are kept and a rerun continues them")


def canonicalize_shards(shards_uri: str | Path, url_rewrite: UrlRewrite | None = None) -> int:
    """Rewrite every finished shard (its stats file exists) reproducibly; returns how many were rewritten.

    Per shard: the tar with members sorted by (key, name), mtime 0 and no owner; the parquet sorted by key; the
    stats without wall-clock fields, written last, which marks the shard canonical (an already canonical
    shard is skipped, so a resumed download rewrites only its new shards). Each file is replaced atomically
    (a rename locally, one whole-object PUT on an object store), so a kill in the middle leaves a shard that
    the next call finishes. Costs one extra read and write of each shard, small next to downloading it.
    """
    import pyarrow.parquet as pq

    fs, root = filesystem(str(shards_uri))
    root = root.rstrip("/")
    fs.invalidate_cache(root)
    rewritten = 0
    for stats_path in sorted(fs.glob(f"{root}/*_stats.json")):
        stats = json.loads(fs.cat_file(stats_path))
        if not any(name in stats for name in WALL_CLOCK_STATS):
            continue
        shard = stats_path.rsplit("/", 1)[-1].removesuffix("_stats.json")
        tar_path = f"{root}/{shard}.tar"
        if fs.exists(tar_path):
            _replace(fs, tar_path, _canonical_tar(fs.cat_file(tar_path), url_rewrite))
        parquet_path = f"{root}/{shard}.parquet"
        if fs.exists(parquet_path):
            with fs.open(parquet_path, "rb") as handle:
                table = pq.read_table(handle)
            if "key" in table.column_names:
                table = table.sort_by("key")
            if url_rewrite is not None and "url" in table.column_names:
                column = table.column_names.index("url")
                table = table.set_column(column, table.field(column), url_rewrite.apply_arrow(table.column("url")))
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            _replace(fs, parquet_path, buffer.getvalue())
        for name in WALL_CLOCK_STATS:
            stats.pop(name, None)
        _replace(fs, stats_path, json.dumps(stats, indent=4, sort_keys=True).encode())
        rewritten += 1
    return rewritten


def _canonical_tar(data: bytes, url_rewrite: UrlRewrite | None = None) -> bytes:
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as source:
        members = [(m.name, source.extractfile(m).read()) for m in source.getmembers() if m.isfile()]
    if url_rewrite is not None:
        members = [(name, _rewrite_sample_url(content, url_rewrite) if name.endswith(".json") else content)
                   for name, content in members]
    # webdataset groups a sample's members by the key before the first dot: sorting keeps them together.
    members.sort(key=lambda item: (item[0].split(".", 1)[0], item[0]))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as target:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o444, 0
            target.addfile(info, io.BytesIO(content))
    return out.getvalue()


def _rewrite_sample_url(content: bytes, url_rewrite: UrlRewrite) -> bytes:
    """A sample's metadata JSON with its `url` rewritten, laid out as img2dataset writes it (indent 4)."""
    meta = json.loads(content)
    if not isinstance(meta.get("url"), str):
        return content
    rewritten = url_rewrite.apply(meta["url"])
    if rewritten == meta["url"]:
        return content
    meta["url"] = rewritten
    return json.dumps(meta, indent=4).encode()


def _replace(fs, path: str, data: bytes) -> None:
    """Replace a file as one step: write-and-rename locally; an object PUT is already all-or-nothing."""
    if "file" in fs.protocol or "local" in fs.protocol:
        tmp = Path(path).with_name(f".{Path(path).name}.canonical")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    data = json.loads(Path(args[0]).read_text())
    data["save_additional_columns"] = tuple(data["save_additional_columns"])
    run_img2dataset(Img2DatasetJob(**data), in_subprocess=False)
    return 0


if __name__ == "__main__":
    from vlv.runtime_env import apply_runtime_defaults

    apply_runtime_defaults()
    sys.exit(main())
