"""Batch API requests for the run a config plans: `vlv captions request` (the training captions) and `vlv arena
request` (the caption arena's judge). No network call.

Both find the published outputs the requests are built from by planning the run (`vlv.run.plan_run`), so they sit
in the application layer; the request formats themselves are `vlv.data.caption_requests` and `vlv.eval.arena`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from vlv.data.caption_requests import CAPTION_PROMPT, write_caption_requests
from vlv.eval.arena import load_rubric, write_judge_requests
from vlv.run import RunOptions, plan_run
from vlv.steps.eval_arena import arena_pairs, caption_set_images_dir

log = logging.getLogger("vlv.captions")
arena_log = logging.getLogger("vlv.arena")


def write_caption_requests_for_run(options: RunOptions, output_path: str, model: str = "gemini-2.0-flash", *,
                                   prompt: str = CAPTION_PROMPT) -> int:
    """`vlv captions request`: requests for the kept images of the run that `options` plans."""
    if not prompt.strip():
        raise ValueError("the captioning prompt is empty; give the prompt text (e.g. --prompt-file prompt.txt)")
    store, plan = plan_run(options)
    keys = {planned.name: planned.key for planned in plan}
    for step in ("download", "aesthetic_filter"):
        if store.read_manifest(step, keys[step]) is None:
            raise ValueError(
                f"no published {step} output for this config (key {keys[step]}) in store {store.uri}: run "
                f"`python pipelines/full_run.py --preset {options.config.preset} --steps prepare_metadata,download,"
                f"aesthetic_filter` (same --config/--set/--store) first")
    kept_uri = store.output_uri("aesthetic_filter", keys["aesthetic_filter"]) + "/kept.parquet"
    shards_uri = store.output_uri("download", keys["download"]) + "/shards"
    count = write_caption_requests(kept_uri, shards_uri, output_path, prompt=prompt)
    log.info("wrote %d requests to %s; create the batch with model %s (the lines do not name a model), then "
             "ingest its responses file with --set ingest_captions.source=<responses.jsonl>", count, output_path, model)
    return count


def write_arena_requests_for_run(options: RunOptions, output_path: str, model: str = "gemini-2.0-flash") -> int:
    """The judge requests for the run `options` plans: caption_eval's output must exist."""
    store, plan = plan_run(options)
    key = next(p.key for p in plan if p.name == "caption_eval")
    caption_eval = store.output("caption_eval", key)
    if caption_eval is None:
        raise ValueError(f"no published caption_eval output for this config (key {key}) in store {store.uri}: run "
                         f"`python pipelines/full_run.py --preset {options.config.preset} --steps caption_eval` (and "
                         "the steps before it; same --config/--set/--store) first")
    cfg = options.config.eval_arena
    with tempfile.TemporaryDirectory() as scratch:
        pairs = arena_pairs(caption_eval, cfg, Path(scratch))
    count = write_judge_requests(pairs, caption_set_images_dir(caption_eval), output_path,
                                 load_rubric(cfg.rubric_file), json_reply=cfg.json_reply)
    arena_log.info(
        "wrote %d judge requests (%d images x %d captioners) to %s; create the batch with model %s (the lines do not "
        "name a model), then --set eval_arena.judge_output=<responses.jsonl>", count,
        len({p.image_id for p in pairs}), len({p.captioner for p in pairs}), output_path, model)
    return count
