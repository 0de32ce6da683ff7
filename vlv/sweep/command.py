"""`python pipelines/sweep.py` and `vlv sweep`: the flags, and from them a validated sweep run on the runner."""

from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

from vlv.cli_flags import OneLineErrorParser, add_config_args, fail_with, print_error
from vlv.config import load_config
from vlv.config_tree import parse_set_flags
from vlv.engine.storage import StoreAccessError
from vlv.engine.store import StoreLockedError
from vlv.run import DEFAULT_STORE
from vlv.sweep.grid import SweepSpec, load_grid_file, parse_grid_flag, prepare_sweep
from vlv.sweep.runner import SweepOptions, SweepOutcome, run_sweep

EXAMPLES = """examples:
  python pipelines/sweep.py --preset tiny --grid eval_fid.t2i_num_steps=2,4 --store /tmp/sweep_runs
  python pipelines/sweep.py --preset paper --config my_paths.yaml --grid-file sweeps/paper_queries.yaml
  python pipelines/sweep.py --preset paper --grid train_stage2.model.trainable=mlp,mlp+llm --parallel 2
"""


def build_sweep_parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog=prog, description="Run the VLV pipeline once per point of a grid, on one store.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_sweep_args(parser)
    return parser


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="an axis: a config key and its values (repeatable: the points are every combination; "
                             "a JSON list when values hold commas: key=[[1.0, 2.0], [4.0]])")
    parser.add_argument("--grid-file", action="append", default=[], metavar="FILE",
                        help="a sweep file (YAML/JSON/TOML) with more axes, e.g. sweeps/paper_queries.yaml")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="run up to N points at once; a point waits while another produces a step it shares")
    parser.add_argument("--dry-run", action="store_true", help="print the sweep id and each point's plan only")


def prepare_from_args(args: argparse.Namespace):
    """The validated sweep of the flags: every point's config built and checked, before anything runs."""
    axes, description = [], []
    for path in args.grid_file:
        file_axes, text = load_grid_file(path)
        axes += file_axes
        description += [text] if text else []
    axes += [parse_grid_flag(text) for text in args.grid]
    overrides = parse_set_flags(args.sets)
    spec = SweepSpec(args.preset, args.config, overrides, tuple(axes), " ".join(description))

    def build(point_overrides: Mapping[str, Any]):
        return load_config(args.preset, args.config, point_overrides)

    return prepare_sweep(spec, build)


def sweep_from_args(args: argparse.Namespace) -> int:
    """Shared body of `pipelines/sweep.py` and `vlv sweep`: 0 when every point ran, 1 when one failed, 2 on an
    error before any point ran."""
    try:
        sweep = prepare_from_args(args)
        options = SweepOptions(sweep, args.store or os.environ.get("VLV_STORE") or DEFAULT_STORE,
                               parallel=args.parallel, dry_run=args.dry_run)
        outcome = run_sweep(options)
    except (ValueError, StoreLockedError, StoreAccessError) as err:
        return fail_with(err, args)
    except Exception as err:  # noqa: BLE001 - anything else: one line, the traceback with --verbose
        if not getattr(args, "verbose", False):
            print_error(RuntimeError(f"{type(err).__name__}: {err} (rerun with --verbose for the traceback)"))
            return 1
        return fail_with(err, args, code=1)
    print(format_sweep(outcome, dry_run=args.dry_run))
    return 1 if outcome.failed and not args.dry_run else 0


def format_sweep(outcome: SweepOutcome, dry_run: bool = False) -> str:
    sweep = outcome.sweep
    lines = [f"sweep {sweep.sweep_id}: {len(sweep.points)} points"]
    for result, plan in zip(outcome.results, outcome.plans):
        to_run = [p.name for p in plan if p.action == "run"]
        if dry_run:
            state = f"{len(to_run)} to run ({', '.join(to_run)})" if to_run else "cached"
        else:
            state = result.status + (f": {result.error}" if result.error else
                                     f", {result.ran} ran, {result.cached} cached")
        lines.append(f"  [{result.point.index}] {result.point.label}: {state}")
    if not dry_run:
        lines.append(f"results: {outcome.folder_uri}/results.csv")
        if outcome.sweep_run_id:
            lines.append(f"MLflow: {outcome.tracking_uri} (sweep run {outcome.sweep_run_id})")
        if outcome.failed:
            lines.append(f"{len(outcome.failed)} point(s) failed; fix the cause and rerun the same command: finished "
                         f"points are cached")
    return "\n".join(lines)

