"""Printouts shown in the docs are regenerated from the code, and a test fails when one is stale.

    python -m tests.test_docs_printouts --write     # rewrite every printout block in docs/
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import sys
from pathlib import Path

from vlv import cli

REPO = Path(__file__).resolve().parents[1]
# (file, block name): the command whose output the block shows.
PRINTOUTS = {
    ("docs/SCALING.md", "vlv-plan"): "vlv plan --preset paper --gpu-type L40S --set aesthetic_filter.gpus_per_actor=1 "
                                     "--set aesthetic_filter.num_actors=8",
}


def printout(command: str) -> str:
    """The block's text: the command line, then what `vlv` prints for it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(shlex.split(command)[1:]) == 0
    return f"```\n$ {command}\n{out.getvalue().rstrip()}\n```"


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- printout:{name}:start -->\n)(.*?)(\n<!-- printout:{name}:end -->)", re.S)


def current(path: str, name: str) -> str:
    found = _pattern(name).search((REPO / path).read_text())
    assert found, f"{path} lost its printout:{name} markers"
    return found.group(2)


def write() -> None:
    for (path, name), command in PRINTOUTS.items():
        file = REPO / path
        file.write_text(_pattern(name).sub(lambda m, c=command: m.group(1) + printout(c) + m.group(3),
                                           file.read_text()))


def test_every_docs_printout_is_current():
    for (path, name), command in PRINTOUTS.items():
        assert current(path, name) == printout(command), (
            f"{path}: the {name} printout is stale; regenerate it with `python -m tests.test_docs_printouts --write`")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true")
    if parser.parse_args().write:
        write()
    sys.exit(0)
