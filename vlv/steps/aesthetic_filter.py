"""Step `aesthetic_filter`: CLIP image embeddings + LAION aesthetic predictor, on the actor pool it declares.

Scores the images of the download step's webdataset shards in an actor pool (each actor loads CLIP and the
predictor once, then reads bundles of shards and scores them in batches: `vlv.steps.shard_batches`), then writes,
sorted by (shard, key) so a rerun is bit-identical:
`scores.parquet` (every decodable image, with its embedding), `kept.parquet` (all of them, or those above a
threshold or in a top quantile: see `keep`),
`undecodable.parquet` (key, shard, reason), `score_histogram.png` and `score_summary.csv`.

A broken image never stops the pool: the actor turns it into an `error` row, and the driver splits those off.
Heavy imports (ray, torch, pyarrow) stay inside functions: the config dataclass here is imported by the CLI.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import pyarrow as pa

from vlv.engine.executor import worker_logger
from vlv.engine.pools import map_on_actors
from vlv.engine.progress_board import status_line_shown
from vlv.engine.step import OutputFile, Resources, Step, StepContext, StepResult, WorkerPool
from vlv.engine.storage import arrow_filesystem, checked_on_this_machine
from vlv.progress import eta_text
from vlv.steps.download import SHARDS
from vlv.steps.shard_batches import ShardBundleActor, bundle_shards, stats_sample_count

log = logging.getLogger("vlv.steps.aesthetic_filter")

_IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")  # img2dataset's encode formats
_ROWS_PER_ROW_GROUP = 8192
_PROGRESS_EVERY_S = 30.0
_TINY_WARNING = "tiny-random CLIP and predictor: scores from a random model mean nothing"
KEEP_MODES = ("all", "threshold", "top_quantile")


@dataclass
class AestheticFilterConfig:
    # "pretrained": open_clip `clip_model` with `clip_pretrained` (a tag like "openai", or a local .bin/.pt path)
    # and the predictor weights from `predictor_weights`. "tiny-random": a small seeded random CLIP and predictor
    # of the same structure: scores mean nothing, the code path is the real one.
    model: Literal["pretrained", "tiny-random"] = "pretrained"
    clip_model: str = "ViT-L-14"
    clip_pretrained: str = "openai"
    # Where a `clip_pretrained` tag's weights are looked for ("" = open_clip's defaults: the Hugging Face cache
    # and ~/.cache/clip). Weights are never downloaded by this step.
    clip_cache_dir: str = ""
    predictor: Literal["v2-mlp", "v1-linear"] = "v2-mlp"
    predictor_weights: str = ""  # e.g. /models/sac+logos+ava1-l14-linearMSE.pth
    # Which scored images go on: "all" (every decodable image; the scores are still computed and recorded),
    # "threshold" (score >= threshold) or "top_quantile" (the best keep_top_quantile fraction). The paper starts
    # from LAION-2B-en-aesthetic, already an aesthetic subset, and cuts on size, aspect and watermark only: "all".
    keep: Literal["all", "threshold", "top_quantile"] = "all"
    threshold: float = 5.0  # used when keep="threshold" (v2 predictor scale; common cut-offs 4.5, 5, 6, 6.5)
    keep_top_quantile: float = 0.5  # used when keep="top_quantile": the fraction kept, in (0, 1]
    batch_size: int = 64
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model == "tiny-random" and self.predictor_weights:
            raise ValueError("aesthetic_filter.predictor_weights is ignored while aesthetic_filter.model="
                             "'tiny-random'; to score with those weights add --set aesthetic_filter.model=pretrained")
        if self.model not in ("pretrained", "tiny-random"):
            raise ValueError(f"aesthetic_filter.model must be 'pretrained' or 'tiny-random', got {self.model!r}")
        if self.predictor not in ("v2-mlp", "v1-linear"):
            raise ValueError(f"aesthetic_filter.predictor must be 'v2-mlp' or 'v1-linear', got {self.predictor!r}")
        if self.keep not in KEEP_MODES:
            raise ValueError(f"aesthetic_filter.keep must be one of {', '.join(KEEP_MODES)}, got {self.keep!r}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"aesthetic_filter.threshold must be a finite number, got {self.threshold}")
        if not 0 < self.keep_top_quantile <= 1:
            raise ValueError(f"aesthetic_filter.keep_top_quantile must be in (0, 1], got {self.keep_top_quantile}")
        if self.batch_size <= 0 or self.num_actors <= 0:
            raise ValueError("aesthetic_filter.batch_size and aesthetic_filter.num_actors must be > 0")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ValueError("aesthetic_filter.cpus_per_actor must be > 0 and aesthetic_filter.gpus_per_actor "
                             f">= 0, got {self.cpus_per_actor} and {self.gpus_per_actor}")


class AestheticScoringActor:
    """The scorer of each pool actor: loads CLIP + predictor once, then decodes, embeds and scores batches of
    samples (webdataset columns: `__key__`, `__url__`, one per member suffix).

    Output rows carry either (score, embedding) or an `error` string, never an exception, so one corrupt
    image costs one row, not the pool.
    """

    def __init__(self, *, config: AestheticFilterConfig, device: str):
        import torch

        from vlv.models.aesthetic import load_predictor, random_predictor
        from vlv.models.clip_embedder import build_clip_embedder

        self._log = _worker_logger()
        torch.set_num_threads(max(1, int(config.cpus_per_actor)))
        self.embedder = build_clip_embedder(config.model, model_name=config.clip_model,
                                            pretrained=config.clip_pretrained, cache_dir=config.clip_cache_dir,
                                            seed=config.seed, device=device)
        if config.model == "tiny-random":
            self.predictor = random_predictor(config.predictor, config.seed, self.embedder.embed_dim)
        else:
            self.predictor = load_predictor(config.predictor, config.predictor_weights, self.embedder.embed_dim)
        self.predictor.to(device)
        self._scored = self._failed = 0
        self._started = self._last_log = time.monotonic()
        self._log.info("aesthetic actor ready: %s CLIP (%d-d) + %s predictor on %s", config.model,
                       self.embedder.embed_dim, config.predictor, device)

    def __call__(self, batch: dict[str, Any]) -> Any:
        import numpy as np
        import pyarrow as pa
        import torch

        from vlv.models.aesthetic import predict_scores

        keys = [str(k) for k in batch["__key__"]]
        shards = [Path(str(u)).name for u in batch["__url__"]]
        captions = [_text(v) for v in batch.get("txt", [None] * len(keys))]
        urls = [_url_from_json(v) for v in batch.get("json", [None] * len(keys))]
        pixels, errors = [], [None] * len(keys)
        for i in range(len(keys)):
            try:
                pixels.append(self.embedder.preprocess_one(_decode_image(batch, i)))
            except Exception as exc:  # noqa: BLE001 - any decode/transform failure is recorded per image
                errors[i] = _reason(exc)
        ok = np.array([e is None for e in errors])
        dim = self.embedder.embed_dim
        embeddings = np.zeros((len(keys), dim), dtype=np.float32)
        scores = np.zeros(len(keys), dtype=np.float32)
        if pixels:
            embeddings[ok] = self.embedder.embed_tensors(torch.stack(pixels))
            scores[ok] = predict_scores(self.predictor, embeddings[ok])
        offsets = pa.array(np.arange(len(keys) + 1, dtype=np.int32) * dim)
        embedding_col = pa.ListArray.from_arrays(offsets, pa.array(embeddings.reshape(-1)), mask=pa.array(~ok))
        self._progress(int(ok.sum()), int((~ok).sum()))
        return pa.table({
            "key": pa.array(keys, pa.string()), "shard": pa.array(shards, pa.string()),
            "url": pa.array(urls, pa.string()), "caption": pa.array(captions, pa.string()),
            "score": pa.array(scores, pa.float32(), mask=~ok), "embedding": embedding_col,
            "error": pa.array(errors, pa.string()),
        })

    def _progress(self, scored: int, failed: int) -> None:
        first = self._scored + self._failed == 0
        self._scored += scored
        self._failed += failed
        now = time.monotonic()
        if first or now - self._last_log >= _PROGRESS_EVERY_S:
            self._last_log = now
            rate = (self._scored + self._failed) / max(now - self._started, 1e-9)
            self._log.info("aesthetic actor: %d images scored, %d undecodable, %.1f images/s", self._scored,
                           self._failed, rate)


def _worker_logger() -> logging.Logger:
    return worker_logger("vlv.aesthetic_actor")


def _decode_image(batch: dict[str, Any], row: int) -> Any:
    """The row's image as a fully loaded RGB PIL image; raises for missing, truncated or non-image bytes."""
    import io

    from PIL import Image

    data = next((batch[s][row] for s in _IMAGE_SUFFIXES if s in batch and isinstance(batch[s][row], bytes)),
                None)
    if data is None:
        raise ValueError(f"sample has no image member (.{', .'.join(_IMAGE_SUFFIXES)})")
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def _reason(exc: Exception) -> str:
    """A short, reproducible reason: PIL's messages embed object addresses, which would differ per run."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "UnidentifiedImageError: not an image format PIL can read"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(exc).__name__}: {exc}")[:300]


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else ""


def _url_from_json(value: Any) -> str:
    import json

    if not isinstance(value, bytes):
        return ""
    try:
        meta = json.loads(value)
    except ValueError:
        return ""
    return str(meta.get("url") or "") if isinstance(meta, dict) else ""


@dataclass(frozen=True)
class ScoreOutcome:
    """What the driver knows after writing scores.parquet and undecodable.parquet."""

    scores: Any  # np.ndarray float32, in key order
    undecodable: int


SCORES_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("url", pa.string()),
                           ("caption", pa.string()), ("score", pa.float32()), ("embedding", pa.list_(pa.float32()))])
KEPT_SCHEMA = pa.schema([f for f in SCORES_SCHEMA if f.name != "embedding"])
UNDECODABLE_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("reason", pa.string())])
SCORES = OutputFile("scores.parquet", "every decodable image with its CLIP embedding and score, by (shard, key)",
                    SCORES_SCHEMA)
KEPT = OutputFile("kept.parquet", "the images at or above the threshold (no embeddings), by (shard, key)",
                  KEPT_SCHEMA)
UNDECODABLE = OutputFile("undecodable.parquet", "samples whose image could not be decoded, with the reason",
                         UNDECODABLE_SCHEMA)


class AestheticFilterStep(Step[AestheticFilterConfig]):
    name = "aesthetic_filter"
    upstream = ("download",)
    code_version = "1"
    description = "Score images with CLIP + LAION aesthetic MLP, keep the best"
    system_metrics = True
    outputs = (SCORES, KEPT, UNDECODABLE, OutputFile("score_histogram.png", "score histogram with the threshold"),
               OutputFile("score_summary.csv", "counts, percentiles and the threshold"))

    def resources(self, config: AestheticFilterConfig) -> Resources:
        # The actor pool asks Ray for its own CPUs/GPUs (and reads the tars); this task hands out shards and
        # writes parquet.
        return Resources(num_cpus=0.5)

    def worker_pools(self, config: AestheticFilterConfig) -> tuple[WorkerPool, ...]:
        return (scoring_pool(config),)

    def weight_paths(self, config: AestheticFilterConfig) -> dict[str, str]:
        if config.model != "pretrained":
            return {}
        paths = {"aesthetic_filter.predictor_weights": config.predictor_weights}
        if config.clip_model.startswith("local-dir:"):
            paths["aesthetic_filter.clip_model"] = config.clip_model.removeprefix("local-dir:")
        return paths

    def preflight(self, config: AestheticFilterConfig) -> None:
        if config.model != "pretrained":
            return
        from vlv.models.aesthetic import PUBLISHED_WEIGHTS, load_predictor
        from vlv.models.clip_embedder import resolve_clip_weights

        published = PUBLISHED_WEIGHTS[config.predictor]
        local = checked_on_this_machine(config.predictor_weights)
        if not config.predictor_weights or (local and not Path(config.predictor_weights).is_file()):
            given = f"'{config.predictor_weights}' does not exist" if config.predictor_weights else "is not set"
            raise ValueError(f"aesthetic_filter.predictor_weights {given}: the {config.predictor} predictor "
                             f"needs its published file {published.file_name} ({published.url}); download it "
                             "and pass --set aesthetic_filter.predictor_weights=/path/to/" + published.file_name)
        if not local:
            return  # a store URI, or a path on the cluster's nodes: the engine checks it where it loads
        try:
            load_predictor(config.predictor, config.predictor_weights)
            resolve_clip_weights(config.clip_model, config.clip_pretrained, config.clip_cache_dir)
        except ValueError as exc:
            raise ValueError(f"aesthetic_filter: {exc}") from exc

    def run(self, ctx: StepContext[AestheticFilterConfig]) -> StepResult:
        cfg = ctx.config
        if cfg.model == "tiny-random":
            ctx.log.warning(_TINY_WARNING)
        shards = _list_shards(ctx.input("download").path(SHARDS))
        ctx.log.info("scoring the images of %d shards on %s, batch %d", len(shards),
                     scoring_pool(cfg).describe(), cfg.batch_size)
        outcome = _write_scores(score_shards(shards, cfg), ctx.output_dir, len(shards), ctx.log)
        if len(outcome.scores) == 0:
            raise ValueError(f"aesthetic_filter: none of the {outcome.undecodable} samples in {len(shards)} "
                             f"shards has a decodable image; reasons in {ctx.output_dir / 'undecodable.parquet'}")
        threshold = choose_threshold(outcome.scores, cfg.keep, cfg.threshold, cfg.keep_top_quantile)
        kept = _write_kept(ctx.output_dir / "scores.parquet", ctx.output_dir / "kept.parquet", threshold)
        ctx.log.info("threshold %.4f keeps %d of %d images (%d undecodable)", threshold, kept,
                     len(outcome.scores), outcome.undecodable)
        write_histogram(ctx.output_dir / "score_histogram.png", outcome.scores, threshold, kept,
                        random_model=cfg.model == "tiny-random")
        write_summary(ctx.output_dir / "score_summary.csv", outcome.scores, threshold, kept, outcome.undecodable)
        metrics = {"images_scored": len(outcome.scores), "images_kept": kept,
                   "images_undecodable": outcome.undecodable, "score_threshold": threshold,
                   "score_mean": float(outcome.scores.astype("float64").mean())}
        return StepResult(metrics=metrics, artifacts=["score_histogram.png", "score_summary.csv"])


def choose_threshold(scores: Any, keep: str, threshold: float, keep_top_quantile: float) -> float:
    """The lowest score kept: the lowest score of all ("all"), the absolute threshold, or the score of the
    ceil(q * n)-th best image (so ties can only keep more)."""
    import numpy as np

    assert len(scores) > 0
    if keep == "all":
        return float(np.nanmin(scores))
    if keep == "threshold":
        return float(np.float32(threshold))
    rank = max(1, math.ceil(keep_top_quantile * len(scores) - 1e-9))
    return float(np.sort(scores)[::-1][rank - 1])


def scoring_pool(config: AestheticFilterConfig) -> WorkerPool:
    return WorkerPool("aesthetic scoring actor", "actors", config.num_actors, config.cpus_per_actor,
                      config.gpus_per_actor)


def _list_shards(shards_uri: str) -> list[str]:
    """The URIs of the sorted `*.tar` files of the download output (local, s3://, gs://)."""
    import pyarrow.fs as pafs

    filesystem, root = arrow_filesystem(shards_uri)
    info = filesystem.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise ValueError(f"aesthetic_filter: the download output has no shards folder at {shards_uri}; "
                         "rerun the download step (--force download)")
    entries = filesystem.get_file_info(pafs.FileSelector(root, recursive=False))
    paths = sorted(e.path for e in entries if e.type == pafs.FileType.File and e.path.endswith(".tar"))
    if not paths:
        raise ValueError(f"aesthetic_filter: no *.tar shards in {shards_uri}; the download step produced no "
                         "images (see its download_counts.csv)")
    return [f"{shards_uri.rstrip('/')}/{path.rsplit('/', 1)[-1]}" for path in paths]


def score_shards(shards: list[str], cfg: AestheticFilterConfig) -> Iterator[Any]:
    """The scored rows (pyarrow tables, shard after shard) of every sample of `shards`, from the actor pool.

    Raw member bytes go to the scorer: decoding happens in the actors, where a bad image becomes a recorded row.
    Bundles of whole shards cut into batches of `batch_size` give the same batches on every run, hence the same
    floats (`vlv.steps.shard_batches`).
    """
    device = "cuda" if cfg.gpus_per_actor > 0 else "cpu"
    bundles = bundle_shards(shards, cfg.batch_size, stats_sample_count)
    scorer = {"scorer_cls": AestheticScoringActor, "scorer_kwargs": {"config": cfg, "device": device},
              "batch_size": cfg.batch_size}
    for table in map_on_actors(scoring_pool(cfg), ShardBundleActor, bundles, constructor_kwargs=scorer,
                               unit="shard bundles"):
        if table is not None:
            yield table


def _write_scores(scored: Iterable[Any], output_dir: Path, num_shards: int, run_log: logging.Logger
                  ) -> ScoreOutcome:
    """Stream the pool's output into scores.parquet and undecodable.parquet, sorted by (shard, key).

    The pool returns its rows shard after shard, so sorting one shard at a time in the driver gives a total
    order without a distributed shuffle (img2dataset keys start with the shard number, so this is also key
    order). Memory holds one bundle of shards, not the dataset.
    """
    import numpy as np
    import pyarrow as pa

    scores: list[Any] = []
    done: set[str] = set()
    pending: list[Any] = []
    counts = {"scored": 0, "undecodable": 0}
    started = last_log = time.monotonic()
    with _parquet_writer(output_dir / "scores.parquet", SCORES_SCHEMA) as good, \
            _parquet_writer(output_dir / "undecodable.parquet", UNDECODABLE_SCHEMA) as bad:

        def flush() -> None:
            if not pending:
                return
            table = pa.concat_tables(pending).sort_by([("key", "ascending")])
            shard = table["shard"][0].as_py()
            assert shard not in done, f"rows of shard {shard} arrived out of order"
            done.add(shard)
            pending.clear()
            ok, failed = _split_decodable(table)
            if ok.num_rows:
                good.write_table(ok, row_group_size=_ROWS_PER_ROW_GROUP)
            if failed.num_rows:
                bad.write_table(failed, row_group_size=_ROWS_PER_ROW_GROUP)
            scores.append(ok["score"].to_numpy(zero_copy_only=False))
            counts["scored"] += ok.num_rows
            counts["undecodable"] += failed.num_rows

        for batch in scored:
            for shard, part in _runs_by_shard(batch):
                if pending and pending[0]["shard"][0].as_py() != shard:
                    flush()
                pending.append(part)
            if time.monotonic() - last_log >= _PROGRESS_EVERY_S:
                last_log = time.monotonic()
                _log_progress(run_log, counts, len(done), num_shards, last_log - started)
        flush()
    _log_progress(run_log, counts, len(done), num_shards, time.monotonic() - started)
    return ScoreOutcome(scores=np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32),
                        undecodable=counts["undecodable"])


def _log_progress(run_log: logging.Logger, counts: dict[str, int], shards_done: int, num_shards: int,
                  elapsed: float) -> None:
    total = counts["scored"] + counts["undecodable"]
    # on a terminal the live status line shows the scoring pool's counts: this line is then DEBUG
    run_log.log(logging.DEBUG if status_line_shown() else logging.INFO,
                "%d/%d shards written: %d images scored, %d undecodable, %.1f images/s (incl. start-up), %s",
                shards_done, num_shards, counts["scored"], counts["undecodable"], total / max(elapsed, 1e-9),
                eta_text(shards_done, num_shards, elapsed))


def _runs_by_shard(batch: Any) -> list[tuple[str, Any]]:
    """Split a batch into its consecutive same-shard slices (a batch can straddle a shard boundary)."""
    import numpy as np

    shards = batch["shard"].to_numpy(zero_copy_only=False)
    if len(shards) == 0:
        return []
    starts = [0, *(np.flatnonzero(shards[1:] != shards[:-1]) + 1).tolist()]
    ends = [*starts[1:], len(shards)]
    return [(str(shards[a]), batch.slice(a, b - a)) for a, b in zip(starts, ends)]


def _split_decodable(table: Any) -> tuple[Any, Any]:
    """(scores rows, undecodable rows), each cast to its output schema (which drops any block metadata)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ok = table.filter(pc.is_null(table["error"]))
    failed = table.filter(pc.is_valid(table["error"]))
    ok = pa.table({n: ok[n] for n in SCORES_SCHEMA.names}, schema=SCORES_SCHEMA)
    failed = pa.table({"key": failed["key"], "shard": failed["shard"], "reason": failed["error"]},
                      schema=UNDECODABLE_SCHEMA)
    return ok, failed


def _parquet_writer(path: Path, schema: Any) -> Any:
    """Fixed writer options: with rows in a fixed order and fixed row groups, the file is bit-identical."""
    import pyarrow.parquet as pq

    return pq.ParquetWriter(path, schema, compression="zstd", compression_level=3, write_statistics=True)


def _write_kept(scores_path: Path, kept_path: Path, threshold: float) -> int:
    """kept.parquet = the rows of scores.parquet (in its order) with score >= threshold, without embeddings."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = KEPT_SCHEMA
    kept = 0
    with _parquet_writer(kept_path, schema) as writer:
        for batch in pq.ParquetFile(scores_path).iter_batches(batch_size=_ROWS_PER_ROW_GROUP,
                                                              columns=schema.names):
            table = pa.Table.from_batches([batch]).cast(schema)
            table = table.filter(pc.greater_equal(table["score"], pa.scalar(np.float32(threshold))))
            if table.num_rows:
                writer.write_table(table, row_group_size=_ROWS_PER_ROW_GROUP)
                kept += table.num_rows
    return kept


def write_histogram(path: Path, scores: Any, threshold: float, kept: int, random_model: bool) -> None:
    """Score histogram with the threshold line (matplotlib's object API: no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.hist(scores, bins=max(10, min(60, len(scores) // 4)), color="#4C72B0")
    axes.axvline(threshold, color="#C44E52", linestyle="--",
                 label=f"threshold {threshold:.4g}: keeps {kept} of {len(scores)}")
    axes.set_xlabel("aesthetic score")
    axes.set_ylabel("images")
    title = "Aesthetic scores"
    if random_model:
        title += " (tiny-random: scores from a random model mean nothing)"
    axes.set_title(title, fontsize=10)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)


def write_summary(path: Path, scores: Any, threshold: float, kept: int, undecodable: int) -> None:
    """statistic,value table: counts, moments and percentiles of the scores, the threshold and the keep rate."""
    import csv

    import numpy as np

    values = scores.astype(np.float64)
    rows = [("images_scored", len(values)), ("images_undecodable", undecodable), ("images_kept", kept),
            ("kept_fraction", kept / len(values)), ("score_threshold", threshold),
            ("score_mean", values.mean()), ("score_std", values.std()), ("score_min", values.min())]
    rows += [(f"score_p{q:02d}", float(np.percentile(values, q))) for q in (5, 25, 50, 75, 95)]
    rows.append(("score_max", values.max()))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["statistic", "value"])
        writer.writerows((name, f"{float(value):.6g}") for name, value in rows)
