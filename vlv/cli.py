"""The `vlv` command and the flags every entry point shares (docs/DESIGN.md section 4.5).

`pipelines/full_run.py` and `vlv run` take the same flags; `vlv status` reports step states for a config.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from vlv.cli_flags import OneLineErrorParser, add_config_args, fail_with, print_error
from vlv.config_tree import parse_set_flags
from vlv.engine.plan import describe_plan, make_plan
from vlv.engine.storage import StoreAccessError
from vlv.engine.store import StoreLockedError
from vlv.logs import configure_logging
from vlv.runtime_env import apply_runtime_defaults
from vlv.store_inventory import format_status, inventory, open_existing_store, verify_all


def add_run_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--steps", action="append", default=[], help="run only these steps (comma-separated)")
    parser.add_argument("--from", dest="from_step", default=None, help="rerun this step and all downstream")
    parser.add_argument("--force", action="append", default=[], help="rerun these steps even if cached")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (cached or to run, key) only")


def options_from_args(args: argparse.Namespace, only: Sequence[str] = ()):
    from vlv.config import load_config
    from vlv.run import DEFAULT_STORE, RunOptions, step_names_from_flags

    config = load_config(args.preset, args.config, parse_set_flags(args.sets))
    return RunOptions(
        config=config,
        store_uri=args.store or os.environ.get("VLV_STORE") or DEFAULT_STORE,
        only=tuple(only) or step_names_from_flags(getattr(args, "steps", [])),
        from_step=getattr(args, "from_step", None),
        force=step_names_from_flags(getattr(args, "force", [])),
        dry_run=getattr(args, "dry_run", False),
    )


def run_from_args(args: argparse.Namespace, only: Sequence[str] = ()) -> int:
    """Shared body of `pipelines/full_run.py` and `vlv run STEP`: returns the process exit code."""
    from vlv.run import StepFailed, format_outcome, run_pipeline

    try:
        options = options_from_args(args, only)
        outcome = run_pipeline(options)
    except (ValueError, StoreLockedError, StoreAccessError) as err:
        return fail_with(err, args)
    except StepFailed as err:
        return fail_with(err, args, code=1)
    except Exception as err:  # noqa: BLE001 - anything else: one line, the traceback with --verbose
        if not getattr(args, "verbose", False):
            print_error(RuntimeError(f"{type(err).__name__}: {err} (rerun with --verbose for the traceback)"))
            return 1
        return fail_with(err, args, code=1)
    if options.dry_run:
        print(describe_plan(outcome.plan))
    else:
        print(format_outcome(outcome))
    return 0


def build_run_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of `pipelines/full_run.py`: the run flags, and the steps and presets in its help."""
    parser = OneLineErrorParser(prog=prog, description=description, epilog=steps_and_presets_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(parser)
    return parser


def steps_and_presets_help() -> str:
    """The pipeline's steps in order and the presets, for --help."""
    from vlv.pipeline import pipeline_steps
    from vlv.presets import PRESETS

    steps = pipeline_steps()
    width = max(len(s.name) for s in steps)
    lines = ["steps, in order (--steps, --from, --force take these names):"]
    lines += [f"  {s.name:<{width}}  {s.description}" for s in steps]
    lines += ["", "presets (--preset):"]
    lines += [f"  {name:<{width}}  {(fn.__doc__ or '').strip().splitlines()[0]}" for name, fn in PRESETS.items()]
    lines += ["", "examples:", "  python pipelines/full_run.py --preset tiny --dry-run",
              "  python pipelines/full_run.py --from download --set download.image_size=128 --store /data/vlv_runs"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from vlv.pipeline import step_names

    parser = OneLineErrorParser(prog="vlv", description="VLV pipeline tools")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)

    status = sub.add_parser("status", help="print each step's state (published / partial / missing) for a config")
    add_config_args(status)

    verify = sub.add_parser("verify", help="check every published output against its manifest checksums")
    add_config_args(verify)

    plan = sub.add_parser("plan", help="resources, GPU-hours and cost of each step (paper figures + assumptions)")
    add_config_args(plan)
    plan.set_defaults(preset="paper")
    plan.add_argument("--gpus", type=int, default=None,
                      help="GPUs for training and evaluation (default: what the training config asks for, paper 8)")
    plan.add_argument("--gpu-type", default="L40S", help="RTX6000-Ada, L40S, A100-80GB or H100-80GB")
    plan.add_argument("--price-per-gpu-hour", type=float, default=None,
                      help="USD per GPU-hour (default: an on-demand price for --gpu-type)")
    plan.add_argument("--price-per-cpu-hour", type=float, default=0.05, help="USD per vCPU-hour for CPU steps")

    run = sub.add_parser("run", help="run one step (its inputs must exist), e.g. `vlv run download`")
    run.add_argument("step", choices=step_names())
    add_config_args(run)
    run.add_argument("--force", action="append", default=[], help="rerun even if cached (give the step name)")
    run.add_argument("--dry-run", action="store_true")

    caption = sub.add_parser("caption", help="caption images with a trained captioner (train_stage2's output)")
    caption.add_argument("images", nargs="+", help="image files")
    caption.add_argument("--checkpoint", required=True,
                         help="a train_stage2 output folder, e.g. vlv_runs/steps/train_stage2/<key>")
    caption.add_argument("--num-beams", type=int, default=None, help="beam width (default: the model's, 4)")
    caption.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's (300 in paper)")

    captions = sub.add_parser("captions", help="caption data tools")
    captions_sub = captions.add_subparsers(dest="captions_command", required=True, parser_class=OneLineErrorParser)
    request = _add_batch_request_parser(captions_sub, "write the Gemini Batch API request JSONL for the kept images "
                                        "(no network call)", "model named in the requests")
    request.add_argument("--prompt-file", default=None,
                         help="UTF-8 text file with the captioning prompt (default: the project's own prompt)")

    sweep = sub.add_parser("sweep", help="the pipeline once per point of a grid of config values, on one store "
                                          "(= python pipelines/sweep.py)")
    _add_sweep_args(sweep)

    arena = sub.add_parser("arena", help="caption arena tools (paper Table 2)")
    arena_sub = arena.add_subparsers(dest="arena_command", required=True, parser_class=OneLineErrorParser)
    _add_batch_request_parser(arena_sub, "write the judge's Gemini Batch API request JSONL for the arena pairs "
                              "(no network call)", "the judge model (paper: gemini-2.0-flash)")
    return parser


def _add_batch_request_parser(subparsers, help_text: str, model_help: str) -> argparse.ArgumentParser:
    """`... request`: the config flags, where to write the Batch API JSONL, and the model the requests name."""
    request = subparsers.add_parser("request", help=help_text)
    add_config_args(request)
    request.add_argument("--output", required=True, help="where to write the request JSONL")
    request.add_argument("--model", default="gemini-2.0-flash", help=model_help)
    return request


def main(argv: Sequence[str] | None = None) -> int:
    apply_runtime_defaults()
    configure_logging()
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return _status(args)
    if args.command == "verify":
        return _verify(args)
    if args.command == "plan":
        return _plan(args)
    if args.command == "run":
        return run_from_args(args, only=[args.step])
    if args.command == "caption":
        return _caption(args)
    if args.command == "sweep":
        from vlv.sweep.command import sweep_from_args

        return sweep_from_args(args)
    if args.command == "captions" and args.captions_command == "request":
        return _captions_request(args)
    if args.command == "arena" and args.arena_command == "request":
        return _arena_request(args)
    raise AssertionError(f"unhandled command {args.command}")


def _add_sweep_args(parser: argparse.ArgumentParser) -> None:
    from vlv.sweep.command import add_sweep_args  # vlv.sweep.command builds on this module's flags

    add_sweep_args(parser)


def _store_and_plan(args: argparse.Namespace):
    """(store, this config's plan, the store's published outputs) without creating or writing anything."""
    from vlv.pipeline import pipeline_steps, step_names

    options = options_from_args(args)
    store = open_existing_store(options.store_uri)
    plan = make_plan(pipeline_steps(), options.config, store)
    return store, plan, inventory(store, plan, step_names())


def _status(args: argparse.Namespace) -> int:
    from vlv.run import step_state

    try:
        store, plan, outputs = _store_and_plan(args)
    except ValueError as err:
        return fail_with(err, args)
    states = {p.name: step_state(store, p) for p in plan}
    print(format_status(store, outputs, plan, states))
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        store, _, outputs = _store_and_plan(args)
        report = verify_all(outputs)
    except ValueError as err:
        return fail_with(err, args)
    for output, problems in report:
        mark = " (this config)" if output.used_by_config else ""
        print(f"{output.step:<18} key={output.key}  {'DAMAGED' if problems else 'ok'}{mark}")
        for problem in problems:
            print(f"    {problem}")
    damaged = sorted({output.step for output, problems in report if problems})
    if damaged:
        print(f"rerun the damaged steps with: python pipelines/full_run.py --force {','.join(damaged)} (same config "
              f"flags as the run that made them)")
        return 1
    print(f"{len(report)} published outputs intact in {store.uri}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from vlv.config import load_config
    from vlv.cost_plan import format_cost_plan, make_cost_plan

    try:
        config = load_config(args.preset, args.config, parse_set_flags(args.sets))
        plan = make_cost_plan(config, gpu_type=args.gpu_type, gpus=args.gpus,
                              price_per_gpu_hour=args.price_per_gpu_hour, price_per_cpu_hour=args.price_per_cpu_hour)
    except ValueError as err:
        print_error(err)
        return 2
    print(format_cost_plan(plan))
    return 0


def _caption(args: argparse.Namespace) -> int:
    from vlv.inference import caption_images

    try:
        captions = caption_images(args.images, args.checkpoint, num_beams=args.num_beams,
                                  max_new_tokens=args.max_new_tokens)
    except ValueError as err:
        print_error(err)
        return 2
    for path, text in zip(args.images, captions):
        print(f"{path}\t{text}")
    return 0


def _captions_request(args: argparse.Namespace) -> int:
    from vlv.batch_requests import write_caption_requests_for_run
    from vlv.data.caption_requests import CAPTION_PROMPT

    try:
        prompt = CAPTION_PROMPT
        if args.prompt_file:
            path = Path(args.prompt_file)
            if not path.is_file():
                raise ValueError(f"--prompt-file {path} does not exist")
            prompt = path.read_text(encoding="utf-8").strip()
        count = write_caption_requests_for_run(options_from_args(args), args.output, model=args.model, prompt=prompt)
    except ValueError as err:
        print_error(err)
        return 2
    print(f"wrote {count} Gemini batch requests to {args.output}")
    return 0


def _arena_request(args: argparse.Namespace) -> int:
    from vlv.batch_requests import write_arena_requests_for_run

    try:
        count = write_arena_requests_for_run(options_from_args(args), args.output, model=args.model)
    except ValueError as err:
        print_error(err)
        return 2
    print(f"wrote {count} judge requests to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
