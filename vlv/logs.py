"""One logging setup for every process the pipeline starts: driver, Ray step tasks, Ray Train workers.

Quiet by default, so a run's console shows what the pipeline does and what went wrong:
- libraries' INFO chatter (MLflow, HTTP clients) is held back to WARNING;
- Ray Data draws no progress bars and logs only warnings to the console (its full log stays in the Ray
  session's ray-data.log): in a log file or a CI console each redraw of a bar is one more line;
- the dependency warnings listed in DEPENDENCY_WARNINGS are filtered, in this process and (through the
  environment) in every process it starts: Ray workers, img2dataset's pool. Each entry says why it is harmless
  here; warnings from this project's own code are fixed where they arise, never filtered;
- lines that Ray's processes print and that say nothing a user can act on (WORKER_NOISE) are dropped from what
  Ray forwards to the driver's console (they stay in the Ray session's worker logs);
- the pipeline's own detail lines are DEBUG: the console shows when each step starts (its worker's "running
  step" line) and ends (the driver's "done" line), progress with rates and ETAs (vlv.progress), training
  lines, warnings and the summary;
- progress is a live status line redrawn under the log when the driver's stderr is a terminal (`bar` mode,
  vlv.engine.progress_board), and periodic lines anywhere else (`lines` mode: log files, `ray job logs`, CI).
  VLV_PROGRESS=lines or =bar in the environment overrides the choice.

`--verbose` (or VLV_VERBOSE=1 in the environment) keeps everything: no filter, no held-back logger, this
project's DEBUG lines, every line of Ray's processes, Ray Data's bars and INFO lines. The settings travel as
environment variables, so workers started afterwards, on this machine or (through
vlv.runtime_env.worker_env_vars) on a cluster, follow the driver's choice.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any

from vlv.secrets import install_log_redaction

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY_LOGGERS = ("alembic", "mlflow", "urllib3", "filelock", "httpx")
# Loggers held back to ERROR unless verbose, with why their warnings say nothing here.
QUIET_LOGGERS = {
    "torch.utils.cpp_extension": "'No CUDA runtime is found' when DeepSpeed builds its CPU ops on a CPU machine",
    "ray._private.authentication.authentication_token_setup":
        "'Token authentication is enabled for this Ray cluster' each time the embedded Ray starts: it has no "
        "dashboard and opens no port to anyone but this driver",
}
VERBOSE_ENV = "VLV_VERBOSE"
PROGRESS_ENV = "VLV_PROGRESS"  # "bar" or "lines", chosen once by the driver (choose_progress_mode)
PROJECT_LOGGER = "vlv"  # this project's loggers: DEBUG lines (details) only when verbose


@dataclass(frozen=True)
class WarningFilter:
    """Ignore warnings of `category` whose message starts with `message` (literal, case-insensitive), raised
    from module `module` (the module Python attributes the warning to; "" for any)."""

    category: str  # a builtin warning class name, so the filter also works in PYTHONWARNINGS
    message: str
    module: str
    why: str

    def install(self) -> None:
        import re

        warnings.filterwarnings("ignore", message=re.escape(self.message), category=_builtin(self.category),
                                module=f"{re.escape(self.module)}\\Z" if self.module else "")
        _installed_filters.append(warnings.filters[0])

    def as_option(self) -> str:
        """The same filter in `-W` / PYTHONWARNINGS syntax (action:message:category:module)."""
        return f"ignore:{self.message}:{self.category}:{self.module}"


# Each entry was printed by the tiny run (python pipelines/full_run.py --preset tiny, torch 2.14, DeepSpeed of
# the lock-free install): add one only for a warning seen, with why it needs no action here.
DEPENDENCY_WARNINGS: tuple[WarningFilter, ...] = (
    WarningFilter("FutureWarning", "`torch.distributed.all_gather_into_tensor` is deprecated", "",
                  "DeepSpeed's ZeRO gathers partitioned parameters with it (once per rank per run); the call works "
                  "in the pinned torch, and moving to its replacement is DeepSpeed's change to make"),
)



@dataclass(frozen=True)
class WorkerNoise:
    """A line printed by one of Ray's processes that the driver leaves off its console: any line containing
    `text` (literal)."""

    text: str
    why: str


# Each entry was printed by the tiny run through Ray's log forwarding (Ray 2.60), with why it needs no action.
WORKER_NOISE: tuple[WorkerNoise, ...] = (
    WorkerNoise("Failed to query Ray Train Controller actor state",
                "Ray Train's placement-group cleaner asks the state API, served by the Ray dashboard, every few "
                "seconds whether the trainer lives; the embedded Ray runs without a dashboard, so every question "
                "fails. Its placement groups go with the embedded Ray when the driver ends (a failed step ends "
                "the driver); on a cluster the dashboard answers and the cleaner works"),
    WorkerNoise("has constructor arguments in the object store and max_restarts > 0",
                "Ray's core worker says it of actors that Ray Data and Ray Train create for us (MapWorker, "
                "PreemptionWatcher); nothing in this project can change it"),
    WorkerNoise("Progress bars disabled. To enable, set",
                "Ray Data says once per process that its bars are off: they are off on purpose (QUIET_ENV)"),
    WorkerNoise("No pretrained weights loaded for model",
                "open_clip building the tiny preset's random CLIP; the step itself warns that its scores come "
                "from a random model"),
    WorkerNoise("_comm_op built successfully",
                "DeepSpeed prints it when each training worker has built its CPU communication op"),
)


# Quiet defaults for this process and every process it starts (set unless the user's environment has them).
QUIET_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # DataContext.enable_progress_bars=False in every Ray Data driver
    "RAY_DATA_LOG_LEVEL": "WARNING",  # Ray Data's INFO lines (plans, "execution finished") off the console
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # no "Downloading artifacts" bar when a model is loaded
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow sets its loggers' level when imported, after configure_logging
    "TQDM_DISABLE": "1",  # every tqdm bar (img2dataset's shard counter, ...): a log file gets a line per redraw
}
# What workers on other nodes need to follow the driver's choice (vlv.runtime_env.worker_env_vars).
CONSOLE_ENV_VARS = (VERBOSE_ENV, PROGRESS_ENV, "PYTHONWARNINGS", *QUIET_ENV)
_quiet_env_set: set[str] = set()  # names this module set, so --verbose removes exactly those
_installed_filters: list[tuple] = []  # the warning filters this module installed, likewise
_warned: set[tuple[str, str]] = set()  # (logger, message) pairs warn_once has said in this process
# Held for every write to the console while a live status line is drawn (vlv.engine.progress_board.LiveLine): the
# line is erased before a log record or a forwarded worker line and redrawn after it.
CONSOLE_LOCK = threading.RLock()
_console_writers: list[Any] = []  # objects with erase() and draw(): the live lines being drawn


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")


def configure_logging(fmt: str = LOG_FORMAT, *, force: bool = False) -> None:
    """INFO to stderr, credentials redacted from every line; quiet (see above) unless verbose."""
    logging.basicConfig(level=logging.INFO, format=fmt, force=force)
    choose_progress_mode()
    if is_verbose():
        _show_everything()
    else:
        _quiet()
    install_log_redaction()


def choose_progress_mode() -> str:
    """`bar` when this process's stderr is a terminal and output is not verbose, else `lines`; decided once, by
    the first process (the driver), and inherited through the environment by every process it starts (Ray
    workers, here and through vlv.runtime_env.worker_env_vars on a cluster)."""
    if os.environ.get(PROGRESS_ENV) not in ("bar", "lines"):
        interactive = sys.stderr is not None and sys.stderr.isatty()
        os.environ[PROGRESS_ENV] = "bar" if interactive and not is_verbose() else "lines"
    return os.environ[PROGRESS_ENV]


def add_console_writer(writer: Any) -> None:
    """Start keeping `writer` (erase(), draw()) below every console write: log records of this process's root
    handlers, and lines Ray forwards from its workers."""
    with CONSOLE_LOCK:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and not getattr(handler, "_vlv_console_aware", False):
                handler.emit = _around_console_write(handler.emit)  # type: ignore[method-assign]
                handler._vlv_console_aware = True  # type: ignore[attr-defined]
        _console_writers.append(writer)


def remove_console_writer(writer: Any) -> None:
    with CONSOLE_LOCK:
        if writer in _console_writers:
            _console_writers.remove(writer)


def _around_console_write(write: Any) -> Any:
    def write_below_live_lines(*args: Any, **kwargs: Any) -> Any:
        with CONSOLE_LOCK:
            if not _console_writers:
                return write(*args, **kwargs)
            for writer in _console_writers:
                writer.erase()
            try:
                return write(*args, **kwargs)
            finally:
                sys.stdout.flush()
                for writer in _console_writers:
                    writer.draw()
    return write_below_live_lines


def filter_worker_output() -> None:
    """Leave the WORKER_NOISE lines off what Ray forwards from its processes to this driver's console (Ray's
    log_to_driver); call after ray.init. Checks the verbose setting line by line, so `--verbose` later still
    shows every line. Does nothing if this Ray does not forward logs, or forwards them some other way."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # another Ray release: its lines go through unfiltered
        return
    with dispatcher._lock:  # noqa: SLF001 - the dispatcher has no public way to wrap a handler
        dispatcher.handlers = [
            (name, _QuietWorkerOutput(handler) if name == "ray_print_logs" and not isinstance(
                handler, _QuietWorkerOutput) else handler) for name, handler in dispatcher.handlers]


def is_worker_noise(line: str) -> bool:
    return any(entry.text in line for entry in WORKER_NOISE)


class _QuietWorkerOutput:
    """Ray's printer of forwarded worker output, given each batch without its noise lines."""

    def __init__(self, printer: Any) -> None:
        self.printer = _around_console_write(printer)  # below a live status line, if one is drawn

    def __call__(self, data: dict[str, Any]) -> None:
        if not is_verbose():
            lines = [line for line in data.get("lines", []) if not is_worker_noise(line)]
            if not lines:
                return
            data = {**data, "lines": lines}
        self.printer(data)


def warn_once(logger: logging.Logger, message: str, *args: Any) -> None:
    """`logger.warning(message, *args)` the first time this process warns with that message (its format, not its
    values); DEBUG afterwards. For a warning that every task of a fan-out would repeat word for word."""
    if (logger.name, message) in _warned:
        logger.debug(message, *args)
        return
    _warned.add((logger.name, message))
    logger.warning(message, *args)


def set_verbose() -> None:
    """Everything on the console from now on, in this process and the processes it starts."""
    os.environ[VERBOSE_ENV] = "1"
    os.environ[PROGRESS_ENV] = "lines"  # every line kept: nothing is redrawn in place
    _show_everything()


class VerboseFlag(argparse.Action):
    """`--verbose`: a store-true flag that switches verbose output on as soon as it is parsed (before any
    Ray worker starts, so the workers inherit it)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("default", False)
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, True)
        set_verbose()


def dependency_warning_options() -> str:
    """DEPENDENCY_WARNINGS as a PYTHONWARNINGS value."""
    return ",".join(f.as_option() for f in DEPENDENCY_WARNINGS)


def set_quiet_environment() -> None:
    """The quiet settings that travel by environment (QUIET_ENV, the dependency-warning filter), set unless the
    user's environment has them; processes started afterwards (Ray's workers, when Ray starts after this) follow.
    configure_logging calls it; so does a test session that starts Ray itself."""
    if is_verbose():
        return
    for name, value in {**QUIET_ENV, "PYTHONWARNINGS": dependency_warning_options()}.items():
        if name not in os.environ:
            os.environ[name] = value
            _quiet_env_set.add(name)


def _quiet() -> None:
    logging.getLogger(PROJECT_LOGGER).setLevel(logging.NOTSET)  # INFO, from the root logger
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    _quiet_ray_train_worker_reports(logging.WARNING)
    set_quiet_environment()
    for entry in DEPENDENCY_WARNINGS:
        entry.install()


def _show_everything() -> None:
    logging.getLogger(PROJECT_LOGGER).setLevel(logging.DEBUG)
    for noisy in (*NOISY_LOGGERS, *QUIET_LOGGERS):
        logging.getLogger(noisy).setLevel(logging.NOTSET)
    _quiet_ray_train_worker_reports(logging.NOTSET)
    for name in sorted(_quiet_env_set):
        os.environ.pop(name, None)
    _quiet_env_set.clear()
    warnings.filters[:] = [f for f in warnings.filters if f not in _installed_filters]
    warnings._filters_mutated()  # noqa: SLF001 - what warnings.filterwarnings itself calls after a change
    _installed_filters.clear()
    if "ray.data" in sys.modules:  # its defaults were read from the environment when it was imported
        sys.modules["ray.data"].DataContext.get_current().enable_progress_bars = True


def _quiet_ray_train_worker_reports(level: int) -> None:
    """Ray Train 2.60 logs "Reporting training result ..." (every checkpoint of every rank) on a logger named by
    its file path, which its own LoggingConfig level does not reach; in a training worker (ray.train imported)
    that logger follows the quiet setting too."""
    if "ray.train" not in sys.modules:
        return
    import importlib.util

    spec = importlib.util.find_spec("ray.train.v2._internal.execution.context")
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(level)


def _builtin(name: str) -> type[Warning]:
    import builtins

    category = getattr(builtins, name, None)
    if not (isinstance(category, type) and issubclass(category, Warning)):
        raise ValueError(f"{name} is not a builtin warning category")
    return category
