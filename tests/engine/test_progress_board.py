"""The live status line: loops publish to the board from any Ray process, the driver draws one line that stays
under the scrolling log, and nothing of it happens outside a terminal."""

from __future__ import annotations

import io
import logging
import re
import sys
import time

import pytest

from vlv.engine import progress_board
from vlv.engine.pools import map_on_tasks
from vlv.engine.progress_board import Counter, LiveLine, ProgressDisplay, publish, render_line
from vlv.engine.step import WorkerPool
from vlv.logs import PROGRESS_ENV, VERBOSE_ENV, choose_progress_mode

BAR_ENV = {"env_vars": {PROGRESS_ENV: "bar"}}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_line_shows_step_counts_rate_and_eta_and_fits_the_width():
    counters = [Counter("download", 36, 120, "samples", 10.0, done_before=16),
                Counter("scoring pool", 2, None, "tasks", 4.0)]
    line = render_line("download", 75.0, counters, width=200)
    assert line.startswith("⠋ download 1m15s | download [###-------] 36/120 samples, 2.00 samples/s, ETA 42s")
    assert line.endswith("| scoring pool 2 tasks, 0.50 tasks/s, ETA n/a")
    short = render_line("download", 5.0, counters, width=40)
    assert len(short) == 40 and short.startswith("⠋ download 5s | download [")
    assert render_line("report", 3.0, [], width=80, tick=1) == "⠙ report 3s | started, no progress reported yet"


def test_a_terminal_gets_the_bar_anything_else_lines_and_verbose_lines(monkeypatch):
    # "" counts as unset; setenv (unlike delenv of an absent variable) makes monkeypatch restore the original, so
    # the mode choose_progress_mode writes does not leak into later tests
    monkeypatch.setenv(PROGRESS_ENV, "")
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert choose_progress_mode() == "bar"
    monkeypatch.setenv(PROGRESS_ENV, "junk")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert choose_progress_mode() == "lines"
    monkeypatch.delenv(PROGRESS_ENV)
    monkeypatch.setenv(VERBOSE_ENV, "1")
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert choose_progress_mode() == "lines"  # --verbose keeps every line: nothing redrawn in place


def test_without_the_bar_nothing_is_published(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "lines")
    assert publish("x", 1, 2, "items", 1.0) is False


@pytest.fixture
def board(ray_session, monkeypatch):
    """The driver's side, as `run` starts it; the board actor lives on for the session, as it does for a driver
    that runs several pipelines (a sweep), and each test starts with an empty board like each step."""
    monkeypatch.setenv(PROGRESS_ENV, "bar")
    display = ProgressDisplay(stream=Terminal())
    display.start()
    display.board.start_step.remote()
    return display


def _counters(board) -> dict[str, Counter]:
    import ray

    return {c.label: c for c in ray.get(board.board.counters.remote())}


def _square_all(items: list[int]) -> list[int]:
    """A step task's map: its pool publishes one count per finished task."""
    return map_on_tasks(WorkerPool("squares", "tasks", 2, 0.5), _square, items)


def _square(x: int) -> int:
    return x * x


def test_a_pool_inside_a_step_task_publishes_its_counts_to_the_driver(board):
    import ray

    task = ray.remote(_square_all).options(num_cpus=0, runtime_env=BAR_ENV)
    assert ray.get(task.remote([1, 2, 3, 4, 5])) == [1, 4, 9, 16, 25]
    counter = _counters(board)["squares"]
    assert (counter.done, counter.total, counter.unit) == (5, 5, "tasks")  # the last count is always sent


def test_a_new_step_starts_with_an_empty_board_and_the_newest_counter_first(board):
    import ray

    ray.get(ray.remote(_publish_two).options(num_cpus=0, runtime_env=BAR_ENV).remote())
    assert [c.label for c in ray.get(board.board.counters.remote())] == ["second", "first"]
    board.board.start_step.remote()
    assert _counters(board) == {}


def _publish_two() -> None:
    time.sleep(progress_board.PUBLISH_EVERY_S)  # a reused worker may have sent "first" a moment ago (throttled)
    assert publish("first", 1, 4, "items", 1.0)
    time.sleep(0.01)
    assert publish("second", 4, 4, "items", 1.0, done_before=2)
    import ray

    # publishing does not wait; a call of the same caller comes after them (calls of different callers
    # to one actor are not ordered)
    ray.get(progress_board._find_board().counters.remote())


def test_log_lines_scroll_above_the_live_line_which_is_erased_at_the_end(board, monkeypatch):
    import ray

    monkeypatch.setenv("COLUMNS", "200")  # the terminal's width: the line shows what fits

    ray.get(ray.remote(_publish_two).options(num_cpus=0, runtime_env=BAR_ENV).remote())
    terminal = Terminal()
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with LiveLine("train_stage1", board.board, terminal) as line:
            deadline = time.monotonic() + 30
            while "second [" not in terminal.getvalue() and time.monotonic() < deadline:
                time.sleep(0.1)
            logging.getLogger("vlv.test").warning("a warning while the line is drawn")
            assert line._drawn
    finally:
        root.removeHandler(handler)
    out = terminal.getvalue()
    # erased, the record, then redrawn: never the record glued to the status line
    assert re.search("\r\x1b\\[Ka warning while the line is drawn\n\r\x1b\\[K. train_stage1 ", out)
    assert "second [##########] 4/4 items, 2.00 items/s, ETA 0s | first [##--------] 1/4 items" in out
    assert out.endswith("\r\x1b[K")  # nothing left on screen when the step is done
