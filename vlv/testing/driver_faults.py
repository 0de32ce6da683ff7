"""Kill a pipeline driver in the middle of a step, then check what it left behind (tests/faults, benchmarks/soak).

A pipeline invocation runs `pipelines/full_run.py` as a subprocess in its own session, with its own store and
its own embedded Ray. `kill_driver` sends SIGKILL to the DRIVER only (as the OOM killer or a lost node would)
and then waits for every process the driver had started to exit: Ray starts its GCS and raylet with
kernel fate-sharing on Linux (they get SIGKILL when their parent dies) and its workers exit when their raylet
goes. Any process still alive after the grace period is reported (and then killed, by pid, so the caller's
machine is clean): a surviving worker could keep writing into the step's staging folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import psutil

from vlv.engine.manifest import MANIFEST_NAME, Manifest, verify_files
from vlv.engine.plan import upstream_of
from vlv.engine.store import RunStore

REPO = Path(__file__).resolve().parents[2]
FULL_RUN = REPO / "pipelines" / "full_run.py"
DATA_STEPS = ("prepare_metadata", "download", "aesthetic_filter", "ingest_captions")
ORPHAN_GRACE_S = 120.0  # how long a killed driver's workers get to exit before they count as survivors
AGENT_GRACE_S = 5.0
_STARTED: list[Driver] = []


@dataclass
class Driver:
    """One running pipeline invocation: its process, store and log file (from `log_start` on)."""

    proc: subprocess.Popen
    store: Path
    log_path: Path
    args: tuple[str, ...]
    log_start: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as handle:
            handle.seek(self.log_start)
            return handle.read().decode(errors="replace")


@dataclass
class KillReport:
    """What `kill_driver` saw: the step it was in, the processes the driver had started, which outlived it.

    `workers` are survivors that run pipeline code (Ray workers and anything they started): they could still
    write into the store, so there must be none. `agents` are Ray's per-node dashboard and runtime-env
    agents: they notice their raylet is gone but then hang reporting it to the dead GCS; they never touch
    the store, and `kill_driver` reaps them.
    """

    step: str
    descendants: int
    workers: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)


def pipeline_command(store: Path, steps: Sequence[str] = (), extra: Sequence[str] = ()) -> list[str]:
    command = [sys.executable, str(FULL_RUN), "--preset", "tiny", "--store", str(store)]
    if steps:
        command += ["--steps", ",".join(steps)]
    return command + list(extra)


def start_driver(store: Path, log_path: Path, steps: Sequence[str] = (), extra: Sequence[str] = (),
                 command: Sequence[str] | None = None, env: dict[str, str] | None = None) -> Driver:
    """Start `full_run.py` (or `command`) in a new session with its own embedded Ray, output to `log_path`."""
    args = tuple(command) if command is not None else tuple(pipeline_command(store, steps, extra))
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "VLV_STORE",
                                                                "PYTEST_CURRENT_TEST")}, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(args)}\n".encode())
        log.flush()
        start = log.tell()
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                env=env, start_new_session=True)
    driver = Driver(proc, store, log_path, args, start)
    _STARTED.append(driver)
    return driver


def stop_started_drivers() -> int:
    """Kill every driver this process started that still runs, with everything it started (test teardown)."""
    stopped = 0
    while _STARTED:
        driver = _STARTED.pop()
        if driver.proc.poll() is None:
            _reap([*descendants(driver.pid), psutil.Process(driver.pid)])
            driver.proc.wait()
            stopped += 1
    return stopped


def run_driver(store: Path, log_path: Path, steps: Sequence[str] = (), extra: Sequence[str] = (),
               command: Sequence[str] | None = None) -> tuple[int, str]:
    """Run an invocation to the end; returns (exit code, this invocation's part of the log)."""
    driver = start_driver(store, log_path, steps, extra, command)
    code = driver.proc.wait()
    return code, driver.log()


# -- where a step is ---------------------------------------------------------------------------------------


def lock_holder(store: Path, step: str) -> dict | None:
    """The lock record of the (single) key of `step` being produced in `store`, if any."""
    for path in sorted((store / ".locks").glob(f"{step}-*.lock")):
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return None


def published(store: Path, step: str) -> list[Path]:
    """Output folders of `step` with a manifest (i.e. published)."""
    return [store / "steps" / step / key for key in RunStore(str(store)).published_keys(step)]


def step_started(driver: Driver, step: str) -> bool:
    """The driver holds the lock of `step` (it is producing it) and has not published it yet."""
    holder = lock_holder(driver.store, step)
    return bool(holder and holder.get("pid") == driver.pid and not published(driver.store, step))


def staging_started(driver: Driver, step: str) -> bool:
    """The step's Ray task has begun: it holds the lock and its staging folder exists."""
    return step_started(driver, step) and any((driver.store / ".staging" / step).glob("*"))


def shards_written(driver: Driver) -> bool:
    """download is mid-work: img2dataset has started writing shards into the staging folder."""
    return step_started(driver, "download") and any((driver.store / ".staging" / "download").glob("*/shards/*.*"))


def shard_finished(driver: Driver) -> bool:
    """download has finished at least one shard in its staging folder (img2dataset writes a shard's
    `_stats.json` when the shard is complete): a rerun has something to resume."""
    return step_started(driver, "download") and any(
        (driver.store / ".staging" / "download").glob("*/shards/*_stats.json"))


def checkpoint_written(driver: Driver, step: str) -> bool:
    """A training step is mid-work: Ray Train has registered at least one checkpoint in scratch (its snapshot)."""
    return step_started(driver, step) and any(
        (driver.store / "scratch" / step).glob("*/ray/*/checkpoint_manager_snapshot.json"))


def logged(driver: Driver, step: str, text: str) -> bool:
    """The step holds its lock and its worker has logged `text` (Ray forwards worker logs to the driver's)."""
    return step_started(driver, step) and text in driver.log()


# When each step counts as "in the middle of its work" (a kill then loses real progress).
MID_STEP: dict[str, Callable[[Driver], bool]] = {
    "prepare_metadata": lambda d: staging_started(d, "prepare_metadata"),
    "download": shards_written,
    "aesthetic_filter": lambda d: logged(d, "aesthetic_filter", "aesthetic actor ready"),
    "ingest_captions": lambda d: staging_started(d, "ingest_captions"),
    "train_stage1": lambda d: checkpoint_written(d, "train_stage1"),
    "train_stage2": lambda d: checkpoint_written(d, "train_stage2"),
    "caption_eval": lambda d: logged(d, "caption_eval", "captioning actor ready"),
}


def ancestors(step: str) -> tuple[str, ...]:
    """Every step `step` depends on, directly or not, in pipeline order."""
    from vlv.pipeline import pipeline_steps

    return tuple(upstream_of(pipeline_steps(), step))


def wait_for(driver: Driver, condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll `condition` until it holds (True) or the driver exits / time runs out (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if driver.proc.poll() is not None:
            return False
        time.sleep(poll_s)
    return False


# -- killing -----------------------------------------------------------------------------------------------


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_driver(driver: Driver, step: str, grace_s: float = ORPHAN_GRACE_S) -> KillReport:
    """SIGKILL the driver process only; wait for everything it had started to exit, report (and reap) the rest.

    Workers get `grace_s` to notice (they exit when their raylet, fate-shared with the driver, is gone);
    Ray's agents a few seconds, since they are known to hang (see KillReport).
    """
    started = descendants(driver.pid)
    os.kill(driver.pid, signal.SIGKILL)
    driver.proc.wait()
    agents = [p for p in started if _is_agent(p)]
    _, workers = psutil.wait_procs([p for p in started if p not in agents], timeout=grace_s)
    _, agents = psutil.wait_procs(agents, timeout=AGENT_GRACE_S)
    report = KillReport(step, len(started), [_describe(p) for p in workers], [_describe(p) for p in agents])
    _reap(workers + agents)
    return report


def _reap(procs: list[psutil.Process]) -> None:
    """Kill leftovers of a killed driver, by pid (only processes that driver started)."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def kill_random_worker(driver: Driver, rng) -> str | None:
    """SIGKILL one busy Ray worker process (a task or actor, not an idle worker, an agent, the GCS or raylet)
    of this driver's Ray; returns what was killed."""
    workers = [p for p in descendants(driver.pid) if _is_ray_worker(p) and not _is_agent(p) and not _is_idle(p)]
    if not workers:
        return None
    victim = rng.choice(workers)
    described = _describe(victim)
    try:
        victim.kill()
    except psutil.NoSuchProcess:
        return None
    return described


def _is_ray_worker(proc: psutil.Process) -> bool:
    try:
        name, cmdline = proc.name(), proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    # Ray titles its worker processes "ray::<task or actor>"; one not yet titled runs default_worker.py (the
    # raylet's own command line only mentions that script as an argument).
    return name.startswith("ray::") or (len(cmdline) > 1 and cmdline[1].endswith("default_worker.py"))


def _is_idle(proc: psutil.Process) -> bool:
    try:
        return proc.name().startswith("ray::IDLE")
    except psutil.NoSuchProcess:
        return True


def _is_agent(proc: psutil.Process) -> bool:
    try:
        return proc.name().startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))
    except psutil.NoSuchProcess:
        return False


def _describe(proc: psutil.Process) -> str:
    try:
        return f"pid {proc.pid} {' '.join(proc.cmdline())[:160]}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"pid {proc.pid}"


# -- stores and outputs ------------------------------------------------------------------------------------


def copy_outputs(source: Path, target: Path, steps: Sequence[str]) -> None:
    """Copy the published outputs of `steps` from one store to another, where they are then cached."""
    for step in steps:
        for folder in published(source, step):
            shutil.copytree(folder, target / "steps" / step / folder.name)


def stray_folders(store: Path, step: str) -> list[Path]:
    """Folders under steps/<step>/ without a manifest: partial output visible outside .staging (must be none)."""
    folder = store / "steps" / step
    return sorted(p for p in folder.iterdir() if not (p / MANIFEST_NAME).exists()) if folder.exists() else []


def read_manifest(folder: Path) -> Manifest:
    return Manifest.from_json((folder / MANIFEST_NAME).read_text())


def file_digests(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of a published output, after checking the files still match the manifest."""
    manifest = read_manifest(folder)
    problems = verify_files(folder, manifest)
    if problems:
        raise AssertionError(f"{folder} does not match its manifest: {problems}")
    return {entry.path: entry.sha256 for entry in manifest.files}


def table_rows(folder: Path) -> dict[str, int]:
    """Rows of every parquet table in an output (the row counts the soak benchmark compares)."""
    import pyarrow.parquet as pq

    return {p.relative_to(folder).as_posix(): pq.ParquetFile(p).metadata.num_rows
            for p in sorted(folder.rglob("*.parquet"))}


def child_statuses(store: Path, experiment_name: str = "vlv") -> list[dict[str, str]]:
    """{step: vlv.status} of each pipeline invocation's MLflow child runs, oldest invocation first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r.info.run_id for r in runs if r.data.tags.get("vlv.pipeline") == "full_run"]
    by_parent: dict[str, dict[str, str]] = {p: {} for p in parents}
    for run in runs:
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent in by_parent:
            by_parent[parent][run.data.tags["vlv.step"]] = run.data.tags.get("vlv.status", "")
    return [by_parent[p] for p in parents]
