"""Quiet console by default, everything with --verbose: checked in fresh processes (the settings are global)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vlv.logs import DEPENDENCY_WARNINGS, QUIET_ENV

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, os, sys, warnings
from vlv.cli import build_run_parser
from vlv.logs import configure_logging
configure_logging()
build_run_parser("full_run.py", "").parse_args(sys.argv[1:])
warnings.warn_explicit("`torch.distributed.all_gather_into_tensor` is deprecated. Please use ...", FutureWarning,
                       "c10d_logger.py", 83, module="torch.distributed.c10d_logger", registry={})
warnings.warn_explicit("a warning of our own", UserWarning, "vlv/x.py", 1, module="vlv.x", registry={})
names = ["VLV_VERBOSE", "PYTHONWARNINGS", *%r]
print(json.dumps({name: os.environ.get(name) for name in names}))
"""


def _probe(*args: str) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "VLV_VERBOSE", *QUIET_ENV)}
    done = subprocess.run([sys.executable, "-W", "default", "-c", PROBE % (list(QUIET_ENV),), *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_quiet_by_default_filters_listed_dependency_warnings_only():
    env, stderr = _probe()
    assert env["VLV_VERBOSE"] is None
    assert {name: env[name] for name in QUIET_ENV} == QUIET_ENV
    assert env["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1" and env["TQDM_DISABLE"] == "1"
    assert env["PYTHONWARNINGS"].split(",") == [f.as_option() for f in DEPENDENCY_WARNINGS]
    assert "all_gather_into_tensor" not in stderr
    assert "a warning of our own" in stderr  # this project's own warnings are fixed at the source, never hidden


def test_verbose_flag_shows_everything_and_tells_the_workers():
    env, stderr = _probe("--verbose")
    assert env["VLV_VERBOSE"] == "1"
    assert all(env[name] is None for name in (*QUIET_ENV, "PYTHONWARNINGS"))  # workers started later: no filter
    assert "`torch.distributed.all_gather_into_tensor` is deprecated" in stderr
    assert "a warning of our own" in stderr


def test_a_users_own_setting_is_kept():
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "0"}
    code = "from vlv.logs import configure_logging; import os; configure_logging(); " \
           "print(os.environ['RAY_DATA_DISABLE_PROGRESS_BARS'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "0"


def test_every_filter_names_its_reason_and_parses_as_a_python_warning_option():
    for entry in DEPENDENCY_WARNINGS:
        assert entry.why and entry.message
        done = subprocess.run([sys.executable, "-W", entry.as_option(), "-c", "pass"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and "Invalid -W option" not in done.stderr, done.stderr


def test_ray_noise_is_left_off_the_drivers_console_unless_verbose(monkeypatch):
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from vlv.logs import WORKER_NOISE, filter_worker_output

    printed: list[list[str]] = []
    dispatcher.add_handler("ray_print_logs", lambda data: printed.append(data["lines"]))
    try:
        filter_worker_output()
        filter_worker_output()  # idempotent: wrapped once
        ours = "2026-12-01 10:07:30 INFO vlv.steps.download: running step download (key 6acf, attempt staging)"
        noise = [f"[2026-12-01 10:12:30,732 E 2689 2823] x: {entry.text} ..." for entry in WORKER_NOISE]
        monkeypatch.delenv("VLV_VERBOSE", raising=False)
        dispatcher.emit({"lines": [*noise, ours], "pid": 1, "is_err": True})
        dispatcher.emit({"lines": noise[:1], "pid": 1, "is_err": True})  # nothing left: nothing printed
        assert printed == [[ours]]
        monkeypatch.setenv("VLV_VERBOSE", "1")
        dispatcher.emit({"lines": noise[:1], "pid": 1, "is_err": True})
        assert printed == [[ours], noise[:1]]
    finally:
        dispatcher.remove_handler("ray_print_logs")


def test_every_noise_entry_says_why():
    from vlv.logs import WORKER_NOISE

    assert all(entry.text and entry.why for entry in WORKER_NOISE)
    assert len({entry.text for entry in WORKER_NOISE}) == len(WORKER_NOISE)


def test_warn_once_warns_then_says_it_at_debug(caplog):
    import logging

    from vlv.logs import warn_once

    logger = logging.getLogger("vlv.test_warn_once")
    with caplog.at_level(logging.DEBUG, logger="vlv.test_warn_once"):
        for n in (1, 2, 3):
            warn_once(logger, "singular covariance with %d images", n)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "singular covariance with 1 images"), ("DEBUG", "singular covariance with 2 images"),
        ("DEBUG", "singular covariance with 3 images")]


def test_verbose_shows_this_projects_debug_lines():
    code = ("import logging, sys; from vlv.logs import configure_logging, set_verbose; configure_logging(); "
            "logging.getLogger('vlv.x').debug('detail one'); set_verbose(); "
            "logging.getLogger('vlv.x').debug('detail two')")
    env = {k: v for k, v in os.environ.items() if k != "VLV_VERBOSE"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=True)
    assert "detail one" not in done.stderr and "detail two" in done.stderr
