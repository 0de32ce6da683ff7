"""The live progress line on a terminal: where a running step's counters meet the driver that draws them.

Two ways to show progress, picked once per invocation (`choose_progress_mode`, vlv.logs):
- `lines` (a log file, `ray job logs`, CI, a pipe): every long loop logs a line with counts, rate and ETA every
  30 s or so; nothing is redrawn, so a log holds one line per report, never one per redraw.
- `bar` (the driver's stderr is a terminal, not --verbose): the loops publish their counters to one small Ray
  actor, the `ProgressBoard`, and the driver redraws a single status line under the log output twice a second:
  `⠹ download 42s | download [###-------] 120/400 samples, 9.80 samples/s, ETA 28s`. Their periodic lines
  go to DEBUG instead; step start and end lines, training lines, warnings and errors still scroll above it.

Publishing is fire-and-forget (a Ray actor call with no wait), at most twice a second per counter, and does
nothing in `lines` mode or when no board runs (a step run outside the pipeline), so a loop calls `publish`
without caring where it runs: the step task, an actor or a Ray Train worker on any node.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, TextIO

from vlv.logs import CONSOLE_LOCK, PROGRESS_ENV, add_console_writer, remove_console_writer
from vlv.progress import format_duration, rate_and_eta

log = logging.getLogger(__name__)

BOARD_NAME = "vlv_progress_board"  # a named actor in the driver's Ray namespace, owned by the driver
PUBLISH_EVERY_S = 0.5  # per counter: the bar redraws at 2 Hz, more would only load the actor
REDRAW_EVERY_S = 0.5
_LOOKUP_RETRY_S = 30.0  # after a failed lookup of the board, ask Ray again only this much later
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


@dataclass(frozen=True)
class Counter:
    """One loop's progress as last published: `done` of `total` (None: unknown) `unit`s, `done_before` of them by
    an earlier attempt (a resumed download or training: not counted in the rate), after `elapsed_s` seconds."""

    label: str
    done: float
    total: float | None
    unit: str
    elapsed_s: float
    done_before: float = 0.0
    published_at: float = 0.0  # board's clock, set when it arrives


class ProgressBoard:
    """The Ray actor holding the latest counter of each loop of the running step (the driver runs one step at a
    time; `start_step` forgets the previous step's counters)."""

    def __init__(self) -> None:
        self._counters: dict[str, Counter] = {}

    def start_step(self) -> None:
        self._counters.clear()

    def update(self, counter: Counter) -> None:
        self._counters[counter.label] = dataclasses.replace(counter, published_at=time.time())

    def counters(self) -> list[Counter]:
        """Newest first."""
        return sorted(self._counters.values(), key=lambda c: c.published_at, reverse=True)


def is_bar_mode() -> bool:
    return os.environ.get(PROGRESS_ENV) == "bar"


# -- the publishing side: any process of the step ----------------------------------------------------------------

_board: Any = None  # the actor handle, once found
_board_missing_until = 0.0
_last_publish: dict[str, float] = {}


def status_line_shown() -> bool:
    """True when this process's counters reach a live status line: `bar` mode and a board to send them to. A loop's
    periodic progress line is then DEBUG (the status line shows it); otherwise INFO."""
    return is_bar_mode() and _find_board() is not None


def publish(label: str, done: float, total: float | None, unit: str, elapsed_s: float, *,
            done_before: float = 0.0) -> bool:
    """Send a loop's counter to the board, unless this counter was sent less than PUBLISH_EVERY_S ago (the last
    count of a known total always goes). Returns `status_line_shown()`, for the caller's periodic line."""
    if not status_line_shown():
        return False
    now = time.monotonic()
    if now - _last_publish.get(label, 0.0) >= PUBLISH_EVERY_S or (total is not None and done >= total):
        _last_publish[label] = now
        _board.update.remote(Counter(label, done, total, unit, elapsed_s, done_before))
    return True


def _find_board() -> Any:
    global _board, _board_missing_until
    if _board is not None or time.monotonic() < _board_missing_until:
        return _board
    import ray

    if not ray.is_initialized():
        return None
    try:
        _board = ray.get_actor(BOARD_NAME)
    except ValueError:  # no board in this namespace: a step run outside the pipeline, or `lines` mode upstream
        _board_missing_until = time.monotonic() + _LOOKUP_RETRY_S
    return _board


# -- the drawing side: the driver ---------------------------------------------------------------------------------


def render_line(step: str, elapsed_s: float, counters: list[Counter], width: int, tick: int = 0) -> str:
    """The status line: spinner, step, time since it started, then the newest counters (one per loop, newest
    first) until the terminal width is used up."""
    head = f"{SPINNER[tick % len(SPINNER)]} {step} {_clock(elapsed_s)}"
    parts = [_describe(c) for c in counters] or ["started, no progress reported yet"]
    line = head
    for part in parts:
        candidate = f"{line} | {part}"
        if len(candidate) > width and line != head:
            break
        line = candidate
    return line[: max(width, 1)]


def _describe(counter: Counter) -> str:
    done, total = counter.done, counter.total
    if total:
        filled = int(round(10 * min(done / total, 1.0)))
        count = f"[{'#' * filled}{'-' * (10 - filled)}] {done:g}/{total:g}"
    else:
        count = f"{done:g}"
    this_attempt = rate_and_eta(done - counter.done_before, (total or 0) - counter.done_before, counter.elapsed_s,
                                counter.unit)
    return f"{counter.label} {count} {counter.unit}, {this_attempt}"


def _clock(seconds: float) -> str:
    return format_duration(seconds) if seconds >= 60 else f"{int(seconds)}s"


class LiveLine:
    """Draws the status line of one running step on `stream` (a terminal) until closed. vlv.logs erases it before
    every log record and every line Ray forwards from its workers, and has it redrawn after, all under
    CONSOLE_LOCK, so the line stays under the scrolling log and never runs into it."""

    def __init__(self, step: str, board: Any, stream: TextIO) -> None:
        self.step, self.board, self.stream = step, board, stream
        self.started = time.monotonic()
        self._counters: list[Counter] = []
        self._drawn = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vlv-live-progress", daemon=True)
        self._tick = 0

    def __enter__(self) -> LiveLine:
        add_console_writer(self)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        remove_console_writer(self)
        self.erase()

    # vlv.logs calls these around every other write to the console
    def erase(self) -> None:
        with CONSOLE_LOCK:
            if self._drawn:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._drawn = False

    def draw(self) -> None:
        with CONSOLE_LOCK:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            text = render_line(self.step, time.monotonic() - self.started, self._counters, width, self._tick)
            self.stream.write(f"\r\x1b[K{text}")
            self.stream.flush()
            self._drawn = True

    def _loop(self) -> None:
        import ray

        while not self._stop.wait(REDRAW_EVERY_S):
            try:
                self._counters = ray.get(self.board.counters.remote(), timeout=2)
            except Exception as err:  # noqa: BLE001 - a slow or lost board only stalls the bar, never the step
                log.debug("progress board did not answer: %s", err)
            self._tick += 1
            self.draw()


_driver_board: tuple[str, Any] | None = None  # (Ray job id, handle): the board this driver started


def _board_of_this_driver() -> Any:
    """One board per driver and Ray connection, held here for the driver's life: a Ray actor dies with its last
    handle, and the workers of a driver that runs several pipelines (a sweep) keep the handle they found."""
    global _driver_board
    import ray

    job = ray.get_runtime_context().get_job_id()
    if _driver_board is None or _driver_board[0] != job:
        actor = ray.remote(num_cpus=0)(ProgressBoard)
        _driver_board = (job, actor.options(name=BOARD_NAME, get_if_exists=True).remote())
    return _driver_board[1]


class ProgressDisplay:
    """The driver's side in `bar` mode: starts the board (a Ray actor of no CPU) and draws one `LiveLine` per
    step it runs. In `lines` mode `step()` does nothing."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.board: Any = None

    def start(self) -> None:
        if not is_bar_mode():
            return
        self.board = _board_of_this_driver()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.board is None:
            yield
            return
        self.board.start_step.remote()
        with LiveLine(name, self.board, self.stream):
            yield
