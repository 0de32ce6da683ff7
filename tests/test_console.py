"""The console of a whole tiny run (session fixture `tiny_store`: driver.log beside the store holds everything a
user would see): short, no tracebacks or Python warnings, none of Ray's noise, and still every line a user needs."""

from __future__ import annotations

import re

from vlv.logs import is_worker_noise
from vlv.pipeline import step_names

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
