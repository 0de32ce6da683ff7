"""The console of a whole tiny run (session fixture `tiny_store`: driver.log beside the store holds everything a
user would see): short, no tracebacks or Python warnings, none of Ray's noise, and still every line a user needs."""

from __future__ import annotations

import os
import pty
import re
import subprocess

import pytest

from vlv.logs import is_worker_noise
from vlv.pipeline import step_names
from vlv.testing.driver_faults import REPO, pipeline_command

MAX_LINES = 120
TRAINING_LINE = re.compile(r"step (\d+)/(\d+) loss \S+ lr \S+ grad_norm \S+ samples/s \S+ ETA \S+")
PYTHON_WARNING = re.compile(r"\b[A-Z]\w*Warning: ")  # `path:line: FutureWarning: ...`, as Python prints them


def _console(tiny_store) -> list[str]:
    return (tiny_store.parent / "driver.log").read_text(encoding="utf-8").splitlines()


def test_a_tiny_runs_console_is_short_and_clean(tiny_store):
    lines = _console(tiny_store)
    listing = "\n".join(lines)
    assert len(lines) < MAX_LINES, f"{len(lines)} console lines:\n{listing}"
    assert not [line for line in lines if "Traceback" in line], listing
    assert not [line for line in lines if PYTHON_WARNING.search(line)], listing
    assert not [line for line in lines if is_worker_noise(line)], listing
    assert not [line for line in lines if "Ray deduplicates logs" in line or "tasks done after" in line], listing


def test_the_console_says_when_each_step_starts_and_ends_and_how_training_goes(tiny_store):
    text = "\n".join(_console(tiny_store))
    for step in step_names():
        assert text.count(f"running step {step} (key") == 1, step  # the step's worker, once: no Ray retry
        assert re.search(rf"step {step}\s+done in [\d.]+s \(\d+ files, [\d.]+ MB\)", text), step
    training = [TRAINING_LINE.search(line) for line in text.splitlines()]
    steps = [(int(m[1]), int(m[2])) for m in training if m]
    assert steps and all(total == steps[0][1] for _, total in steps), steps
    assert [i for i, _ in steps] == list(range(1, steps[0][1] + 1)) * 2  # stage 1, then stage 2
    assert re.search(r"download: \d+/\d+ shards after \d+s, .* samples/s, (ETA \S+|done)", text)  # progress
    assert f"report: {tiny_store}/steps/report/" in text  # the summary's last lines


SPINNER_START = re.compile(r"^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] ")


@pytest.mark.slow  # a tiny run of the two cheapest steps under a pseudo-terminal: about a minute
def test_on_a_terminal_progress_is_one_live_line_under_the_log(tmp_path):
    """The driver's stderr is a terminal: progress is redrawn in place (erase, redraw) and never runs into a log line;
    nothing is left of it when the run ends."""
    main, child = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("VLV_PROGRESS", "RAY_ADDRESS", "PYTEST_CURRENT_TEST")}
    env["COLUMNS"] = "200"
    proc = subprocess.Popen(pipeline_command(tmp_path / "store", ["prepare_metadata", "download"]), stdin=child,
                            stdout=child, stderr=child, env=env, cwd=REPO, start_new_session=True)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the terminal closed: the driver and everything it started are gone
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    out = b"".join(chunks).decode("utf-8", "replace")
    pieces = out.split("\r\x1b[K")
    status = [p for p in pieces if SPINNER_START.match(p)]
    assert any(re.match(r"^. download \d+s \| download \[[#-]{10}\] \d+/29 samples, [\d.]+ samples/s, ETA", p)
               for p in status), out[-3000:]
    assert not [p for p in status if "\n" in p], "a log line ran into the status line"  # erased before each line
    assert "step download         done in" in out
    assert not SPINNER_START.match(pieces[-1].strip("\r\n"))  # erased at the end
    assert not re.search(r"download: \d+/\d+ shards after", out)  # the periodic line went to DEBUG
