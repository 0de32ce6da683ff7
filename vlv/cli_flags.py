"""The flags and the error printing every command shares (`vlv`, `pipelines/full_run.py`, `pipelines/sweep.py`).

Its own module so the commands built on it (vlv.cli, vlv.sweep.command) import it without importing each other.
"""

from __future__ import annotations

import argparse
import sys

from vlv.logs import VerboseFlag
from vlv.secrets import redact


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny",
                        help="tiny (CPU, minutes), paper (real sizes) or paper_mini (the paper's code paths and "
                             "formats at miniature size: CPU, minutes)")
    parser.add_argument("--config", default=None, help="YAML/JSON/TOML file of config overrides")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set download.image_size=64 (repeatable)")
    parser.add_argument("--store", default=None,
                        help="run store: a folder or fsspec URI (default $VLV_STORE, else ./vlv_runs)")
    parser.add_argument("--verbose", action=VerboseFlag,
                        help="everything on the console: detail (DEBUG) lines, dependency warnings, Ray's own lines, "
                             "progress bars, tracebacks of errors")



def print_error(err: BaseException) -> None:
    """One line on stderr; an error can quote a value that holds a credential, so it is redacted."""
    print(f"error: {redact(str(err))}", file=sys.stderr)


def fail_with(err: BaseException, args: argparse.Namespace, code: int = 2) -> int:
    """Print the error (and, with --verbose, its traceback); returns the exit code."""
    if getattr(args, "verbose", False):
        import traceback

        print(redact("".join(traceback.format_exception(err))), file=sys.stderr)
    print_error(err)
    return code


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, naming the problem and where to look
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")
