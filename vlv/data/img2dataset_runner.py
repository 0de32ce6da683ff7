"""One img2dataset 1.47 `download(...)` call, in this process or in a child process.

In-process is the normal path: it works inside a Ray task (checked by tests/steps/test_download.py), whose
worker runs tasks on its main thread, and img2dataset's multiprocessing distributor spawns its own pool.
img2dataset installs a SIGINT handler (signal.signal only works on the main thread) and leaves it installed,
so the caller's handler is put back afterwards. Off the main thread the call goes to a child process running
this module (`python -m vlv.data.img2dataset_runner JOB.json`), which has the `__main__` guard that the
spawn start method needs.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


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
    from img2dataset import download

    previous_handler = signal.getsignal(signal.SIGINT)
    try:
        download(**job.download_kwargs())
    finally:
        signal.signal(signal.SIGINT, previous_handler)


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
