"""Run one pipeline step: `python pipelines/run_step.py STEP [--preset ...] [--force STEP]`.

The step's inputs must already be in the store; otherwise the error names the step that produces them.
"""

from __future__ import annotations

import sys
from typing import Sequence

from vlv.cli import main as vlv_main


def main(argv: Sequence[str] | None = None) -> int:
    return vlv_main(["run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
