"""A sweep: `python pipelines/sweep.py [--preset P] [--store S] --grid key=v1,v2 [--grid ...] [--parallel N]`.

The pipeline once per grid point on one store (shared upstream steps run once); results in
`<store>/sweeps/<sweep-id>/results.csv` and in one MLflow sweep run. Rerun the same command to resume.
"""

from __future__ import annotations

import sys
from typing import Sequence

from vlv.logs import configure_logging
from vlv.runtime_env import apply_runtime_defaults
from vlv.sweep.command import build_sweep_parser, sweep_from_args


def main(argv: Sequence[str] | None = None) -> int:
    apply_runtime_defaults()
    configure_logging()
    return sweep_from_args(build_sweep_parser("sweep.py").parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
