"""Write N realistic Gemini Batch API output lines (the ingestion benchmark's input; `vlv.testing.gemini_rows`).

    python benchmarks/make_gemini_rows.py 1000000 benchmarks/_work/gemini_1m.jsonl [--seed 0] [--faulty 0.002]
"""

from __future__ import annotations

import argparse
import sys

from vlv.testing.gemini_rows import write_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, help="number of lines")
    parser.add_argument("out", help="output .jsonl path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faulty", type=float, default=0.002, help="fraction of faulty lines")
    args = parser.parse_args(argv)
    if args.n <= 0 or not 0 <= args.faulty < 1:
        parser.error("n must be > 0 and --faulty in [0, 1)")
    write_rows(args.n, args.out, seed=args.seed, faulty=args.faulty)
    return 0


if __name__ == "__main__":
    sys.exit(main())
