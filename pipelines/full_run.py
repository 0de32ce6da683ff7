"""The whole VLV pipeline: `python pipelines/full_run.py [--preset tiny|paper] [...]`.

Same file under a cluster: `ray job submit --working-dir . -- python pipelines/full_run.py --preset paper`.
Without RAY_ADDRESS it starts an embedded local Ray.
"""

from __future__ import annotations

import sys
from typing import Sequence

from vlv.cli import build_run_parser, run_from_args
from vlv.logs import configure_logging
from vlv.runtime_env import apply_runtime_defaults


def main(argv: Sequence[str] | None = None) -> int:
    apply_runtime_defaults()
    configure_logging()
    parser = build_run_parser("full_run.py", "Run the VLV pipeline (cached steps are skipped).")
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
