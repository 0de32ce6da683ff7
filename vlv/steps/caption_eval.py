"""Step `caption_eval`: caption the evaluation images with the trained captioner (on the actor pool it declares).

Two image sets: a COCO-format caption set (caption FID, reconstruction FID, sample captions in the report) and
the images of the VQA benchmarks, evaluation split and exemplar split (k-shot prompts). Each distinct image file
is captioned once, by an actor that loads the captioner once. The caption set is `max_images` images of the COCO
file (paper: 30K of COCO 2014 val), by default a seeded random sample in image_id order (`subset`, `seed`; see
`vlv.eval.coco_captions.select_images`). Outputs:
- `captions.parquet` (image_id, file_name, caption, references): the caption set (image_id order, or file order
  with `subset="first"`);
- `eval_image_ids.json` (artifact): which images of which file were chosen, how, and their ids, for auditing;
- `vqa_captions.parquet` (benchmark, split, image_id, caption);
- `eval_sets.json`: the resolved sets (`vlv.eval.eval_sets`), which `eval_fid` and `eval_vqa` read;
- `sample_captions.csv` (artifact): a few generated captions beside a reference caption.
With `tiny_sets`, every empty path is filled from the tiny sets (scikit-image photos, `write_tiny_eval_sets`),
written into this step's output. An image that cannot be read fails the step: an evaluation on a silently
smaller set would give numbers that look valid and are not.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import pyarrow as pa

from vlv.engine.executor import worker_logger
from vlv.engine.pools import map_on_actors
from vlv.engine.step import OutputFile, Resources, Step, StepContext, StepOutput, StepResult, WorkerPool
from vlv.engine.storage import checked_on_this_machine, filesystem
from vlv.eval.coco_captions import load_coco_captions, select_images
from vlv.eval.eval_sets import EVAL_SETS_FILE, EvalSets, VqaBenchmark, VqaSplit, image_files, load_split
from vlv.eval.tiny_sets import write_tiny_eval_sets
from vlv.models.image_files import image_as_array
from vlv.models.trained_folder import load_captioner, read_captioner_config
from vlv.paths import safe_child
from vlv.progress import rate_and_eta

TINY_DIR = "tiny_sets"
EVAL_IMAGE_IDS_FILE = "eval_image_ids.json"
CAPTIONS = OutputFile("captions.parquet", "the caption set's generated captions, in file order",
                      pa.schema([("image_id", pa.int64()), ("file_name", pa.string()), ("caption", pa.string()),
                                 ("references", pa.list_(pa.string()))]))
VQA_CAPTIONS = OutputFile("vqa_captions.parquet", "captions of the VQA images, evaluation and exemplar splits",
                          pa.schema([("benchmark", pa.string()), ("split", pa.string()), ("image_id", pa.int64()),
                                     ("caption", pa.string())]))
_NAME = re.compile(r"^[a-z0-9_]+$")
_PROGRESS_EVERY_S = 30.0


@dataclass
class VqaBenchmarkConfig:
    """One VQA benchmark in the official format: evaluation split + the separate split k-shot exemplars use."""

    name: str = "vqav2"  # used in metric names: lowercase letters, digits, underscores
    questions_json: str = ""  # e.g. v2_OpenEnded_mscoco_val2014_questions.json
    annotations_json: str = ""  # e.g. v2_mscoco_val2014_annotations.json
    images_dir: str = ""  # e.g. /data/coco/val2014
    image_file_pattern: str = "COCO_val2014_{image_id:012d}.jpg"
    max_questions: int = 0  # the first N questions in file order (0 = all)
    exemplar_questions_json: str = ""  # the exemplar split (e.g. the train split), never the evaluated one
    exemplar_annotations_json: str = ""
    exemplar_images_dir: str = ""
    exemplar_image_file_pattern: str = "COCO_train2014_{image_id:012d}.jpg"
    exemplar_pool_size: int = 256  # a seeded sample of exemplar questions to caption (0 = all)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"caption_eval.vqa[].name must be lowercase letters, digits and '_', got {self.name!r}")
        for attr in ("image_file_pattern", "exemplar_image_file_pattern"):
            if "{image_id" not in getattr(self, attr):
                raise ValueError(f"caption_eval.vqa[{self.name}].{attr} must contain '{{image_id}}' (e.g. "
                                 f"'COCO_val2014_{{image_id:012d}}.jpg'), got {getattr(self, attr)!r}")
        if self.max_questions < 0 or self.exemplar_pool_size < 0:
            raise ValueError(f"caption_eval.vqa[{self.name}].max_questions and exemplar_pool_size must be >= 0")

    def eval_paths(self) -> dict[str, str]:
        return {"questions_json": self.questions_json, "annotations_json": self.annotations_json,
                "images_dir": self.images_dir}

    def exemplar_paths(self) -> dict[str, str]:
        return {"exemplar_questions_json": self.exemplar_questions_json,
                "exemplar_annotations_json": self.exemplar_annotations_json,
                "exemplar_images_dir": self.exemplar_images_dir}


def _paper_benchmarks() -> list[VqaBenchmarkConfig]:
    return [VqaBenchmarkConfig(name="vqav2"), VqaBenchmarkConfig(name="okvqa")]


@dataclass
class CaptionEvalConfig:
    # Fill every empty path below from the tiny sets (8 + 5 scikit-image photos, hand-written captions and VQA
    # answers) written into this step's output. Off (paper): every path must be set.
    tiny_sets: bool = False
    images_dir: str = ""  # COCO-format caption set, e.g. /data/coco/val2014
    captions_json: str = ""  # e.g. captions_val2014.json
    max_images: int = 0  # N images of the caption set (paper FID: 30000 of COCO 2014 val); 0 = all
    # "random": a seeded random sample (seed below), listed in image_id order; "first": the first N in file order
    subset: Literal["random", "first"] = "random"
    vqa: list[VqaBenchmarkConfig] = field(default_factory=_paper_benchmarks)
    batch_size: int = 8
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    num_beams: int = 0  # 0: the checkpoint's (paper: 4)
    max_new_tokens: int = 0  # 0: the checkpoint's (paper: 300)
    sample_rows: int = 8  # rows of sample_captions.csv
    seed: int = 0  # the caption-set subset and the VQA exemplar pools

    def __post_init__(self) -> None:
        for name in ("max_images", "num_beams", "max_new_tokens", "sample_rows"):
            if getattr(self, name) < 0:
                raise ValueError(f"caption_eval.{name} must be >= 0, got {getattr(self, name)}")
        if self.subset not in ("random", "first"):
            raise ValueError(f"caption_eval.subset must be 'random' (a seeded sample, caption_eval.seed) or 'first' "
                             f"(the first max_images in file order), got {self.subset!r}")
        if self.batch_size < 1 or self.num_actors < 1:
            raise ValueError("caption_eval.batch_size and caption_eval.num_actors must be >= 1")
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0:
            raise ValueError("caption_eval.cpus_per_actor must be > 0 and caption_eval.gpus_per_actor >= 0")
        names = [b.name for b in self.vqa]
        if len(set(names)) != len(names):
            raise ValueError(f"caption_eval.vqa names must be distinct, got {names}")

    def missing_paths(self) -> list[str]:
        """Config fields that must be set but are empty (none with tiny_sets: those come from the tiny sets)."""
        if self.tiny_sets:
            return []
        missing = [f"caption_eval.{n}" for n in ("images_dir", "captions_json") if not getattr(self, n)]
        for i, bench in enumerate(self.vqa):
            paths = {**bench.eval_paths(), **bench.exemplar_paths()}
            missing += [f"caption_eval.vqa[{i}].{n} ({bench.name})" for n, v in paths.items() if not v]
        return missing


class CaptioningActor:
    """One pool actor: loads the captioner once, then reads, resizes and captions batches of image files.

    A file that cannot be read becomes an `error` row, so the driver can name every bad file at once.
    """

    def __init__(self, *, checkpoint: StepOutput, num_beams: int, max_new_tokens: int, device: str,
                 num_threads: int):
        import torch

        torch.set_num_threads(max(1, num_threads))
        self._log = _worker_logger()
        checkpoint_dir = checkpoint.local_folder()  # fetched once on this actor's node from an object store
        cfg = read_captioner_config(checkpoint_dir)
        self.num_beams = num_beams or cfg.num_beams
        self.max_new_tokens = max_new_tokens or cfg.max_new_tokens
        self.model = load_captioner(checkpoint_dir).to(device)
        self.image_size = self.model.embedder.image_size
        self._done = 0
        self._started = self._last_log = time.monotonic()
        self._log.info("captioning actor ready on %s: %d beams, up to %d new tokens, %dpx images", device,
                       self.num_beams, self.max_new_tokens, self.image_size)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        paths = [str(p) for p in batch["path"]]
        arrays, errors = [], [""] * len(paths)
        for i, path in enumerate(paths):
            try:
                arrays.append(image_as_array(path, self.image_size))
            except Exception as exc:  # noqa: BLE001 - every unreadable file is reported by the driver
                errors[i] = f"{type(exc).__name__}: {exc}"[:300]
        captions = [""] * len(paths)
        if arrays:
            texts = iter(self.model.generate(torch.from_numpy(np.stack(arrays)), num_beams=self.num_beams,
                                             max_new_tokens=self.max_new_tokens))
            captions = [next(texts) if not err else "" for err in errors]
        self._done += len(paths)
        now = time.monotonic()
        if now - self._last_log >= _PROGRESS_EVERY_S:
            self._last_log = now
            self._log.info("captioning actor: %d images, %.2f images/s", self._done,
                           self._done / (now - self._started))
        return {"path": np.array(paths, dtype=object), "caption": np.array(captions, dtype=object),
                "error": np.array(errors, dtype=object)}


def _worker_logger() -> logging.Logger:
    return worker_logger("vlv.caption_actor")


class CaptionEvalStep(Step[CaptionEvalConfig]):
    name = "caption_eval"
    upstream = ("train_stage2",)
    code_version = "2"  # 2: the caption set is a seeded random subset, recorded in eval_image_ids.json
    description = "Caption the evaluation images (COCO caption set, VQA splits) with the trained captioner"
    system_metrics = True

    outputs = (CAPTIONS, VQA_CAPTIONS, OutputFile(EVAL_SETS_FILE, "the resolved evaluation sets eval_fid and "
                                                           "eval_vqa read"),
               OutputFile("sample_captions.csv", "a few generated captions beside a reference caption"),
               OutputFile(EVAL_IMAGE_IDS_FILE, "the caption-set images chosen, with the seed that chose them"))

    def resources(self, config: CaptionEvalConfig) -> Resources:
        return Resources(num_cpus=0)  # the actor pool asks for its own CPUs/GPUs

    def worker_pools(self, config: CaptionEvalConfig) -> tuple[WorkerPool, ...]:
        return (captioning_pool(config),)

    def preflight(self, config: CaptionEvalConfig) -> None:
        missing = config.missing_paths()
        if missing:
            raise ValueError(f"caption_eval: these evaluation paths are not set: {', '.join(missing)}. Point them "
                             "at COCO val2014 (captions_val2014.json + images) and the VQAv2 / OK-VQA question, "
                             "annotation and image files, or set caption_eval.tiny_sets=true for the tiny sets")
        for name, value in _given_paths(config):
            if checked_on_this_machine(value) and not Path(value).exists():
                raise ValueError(f"caption_eval: {name}={value!r} does not exist")

    def weight_paths(self, config: CaptionEvalConfig) -> dict[str, str]:
        return dict(_given_paths(config))  # the evaluation files: every actor's node must see them

    def run(self, ctx: StepContext[CaptionEvalConfig]) -> StepResult:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cfg = ctx.config
        sets = resolve_eval_sets(cfg, ctx.output_dir)
        (ctx.output_dir / EVAL_SETS_FILE).write_text(sets.to_json(), encoding="utf-8")
        sets = sets.resolved(ctx.output_dir)
        coco = load_coco_captions(sets.captions_json, images_dir=sets.images_dir)
        images = select_images(coco.images, sets.max_images, subset=sets.subset, seed=sets.subset_seed)
        write_image_ids(ctx.output_dir / EVAL_IMAGE_IDS_FILE, sets, images, len(coco.images))
        ctx.log.debug("caption set: %d of the %d images of %s (%s%s)", len(images), len(coco.images),
                      Path(sets.captions_json).name, sets.subset,
                      f", seed {sets.subset_seed}" if sets.subset == "random" else "")
        coco_files = [safe_child(sets.images_dir, image.file_name, "COCO file_name") for image in images]
        vqa_rows: list[tuple[str, str, int, Path]] = []  # benchmark, split, image_id, file
        for bench in sets.vqa:
            for split_name, split in (("eval", bench.eval), ("exemplars", bench.exemplars)):
                files = image_files(split, load_split(split).image_ids())
                vqa_rows += [(bench.name, split_name, image_id, path) for image_id, path in sorted(files.items())]
        unique = sorted({str(p) for p in coco_files} | {str(row[3]) for row in vqa_rows})
        ctx.log.info("captioning %d distinct images (%d in the caption set, %d VQA rows over %d benchmarks)",
                     len(unique), len(coco_files), len(vqa_rows), len(sets.vqa))
        where = share_written_images(ctx)
        by_worker_path = caption_files([where(p) for p in unique], ctx.input("train_stage2"), cfg, ctx.log)
        captions = {p: by_worker_path[where(p)] for p in unique}

        coco_table = pa.table({
            "image_id": pa.array([image.image_id for image in images], pa.int64()),
            "file_name": pa.array([image.file_name for image in images], pa.string()),
            "caption": pa.array([captions[str(p)] for p in coco_files], pa.string()),
            "references": pa.array([list(coco.captions[image.image_id]) for image in images],
                                   pa.list_(pa.string())),
        })
        pq.write_table(coco_table, ctx.output_dir / str(CAPTIONS))
        pq.write_table(pa.table({
            "benchmark": pa.array([r[0] for r in vqa_rows], pa.string()),
            "split": pa.array([r[1] for r in vqa_rows], pa.string()),
            "image_id": pa.array([r[2] for r in vqa_rows], pa.int64()),
            "caption": pa.array([captions[str(r[3])] for r in vqa_rows], pa.string()),
        }), ctx.output_dir / str(VQA_CAPTIONS))
        write_sample_captions(ctx.output_dir / "sample_captions.csv", coco_table.slice(0, cfg.sample_rows))
        words = [len(text.split()) for text in captions.values()]
        metrics = {"images_captioned": float(len(captions)), "caption_set_images": float(len(images)),
                   "vqa_images": float(len({str(r[3]) for r in vqa_rows})),
                   "mean_caption_words": sum(words) / len(words), "empty_captions": float(words.count(0))}
        return StepResult(metrics=metrics, artifacts=["sample_captions.csv", EVAL_IMAGE_IDS_FILE])


def resolve_eval_sets(cfg: CaptionEvalConfig, output_dir: Path) -> EvalSets:
    """The config's sets, with empty paths taken from the tiny sets (written under output_dir) if enabled."""
    tiny = None
    if cfg.tiny_sets:
        tiny = write_tiny_eval_sets(output_dir / TINY_DIR)

    def rel(path: Path) -> str:
        return str(path.relative_to(output_dir))

    images_dir, captions_json = cfg.images_dir, cfg.captions_json
    if tiny is not None and not (images_dir and captions_json):
        images_dir, captions_json = rel(tiny.captions.images_dir), rel(tiny.captions.captions_json)
    benchmarks = []
    for bench in cfg.vqa:
        if tiny is not None and not all(bench.eval_paths().values()):
            eval_split = VqaSplit(rel(tiny.vqa.questions_json), rel(tiny.vqa.annotations_json),
                                  rel(tiny.vqa.images_dir), image_index_json=rel(tiny.captions.captions_json),
                                  max_questions=bench.max_questions)
        else:
            eval_split = VqaSplit(bench.questions_json, bench.annotations_json, bench.images_dir,
                                  image_file_pattern=bench.image_file_pattern, max_questions=bench.max_questions)
        if tiny is not None and not all(bench.exemplar_paths().values()):
            exemplar_split = VqaSplit(rel(tiny.exemplar_vqa.questions_json), rel(tiny.exemplar_vqa.annotations_json),
                                      rel(tiny.exemplar_vqa.images_dir),
                                      image_index_json=rel(tiny.exemplar_captions.captions_json),
                                      pool_size=bench.exemplar_pool_size, seed=cfg.seed)
        else:
            exemplar_split = VqaSplit(bench.exemplar_questions_json, bench.exemplar_annotations_json,
                                      bench.exemplar_images_dir, image_file_pattern=bench.exemplar_image_file_pattern,
                                      pool_size=bench.exemplar_pool_size, seed=cfg.seed)
        benchmarks.append(VqaBenchmark(bench.name, eval_split, exemplar_split))
    return EvalSets(captions_json=captions_json, images_dir=images_dir, max_images=cfg.max_images,
                    vqa=tuple(benchmarks), tiny=tiny is not None, subset=cfg.subset, subset_seed=cfg.seed)


def write_image_ids(path: Path, sets: EvalSets, images: Any, images_in_file: int) -> None:
    """The chosen caption-set images, with what chose them: enough to check or rebuild the subset elsewhere."""
    record = {"format": "vlv-eval-image-ids-v1", "captions_json": Path(sets.captions_json).name,
              "images_in_file": images_in_file, "max_images": sets.max_images, "subset": sets.subset,
              "seed": sets.subset_seed if sets.subset == "random" else None,
              "order": "image_id" if sets.subset == "random" else "file",
              "image_ids": [image.image_id for image in images]}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")


def share_written_images(ctx: StepContext[CaptionEvalConfig]) -> Callable[[str], str]:
    """How actors on any node reach the images: files this step wrote (the tiny sets) by their place in the store.

    On an object store the tiny sets are uploaded into this attempt's place at once (the commit re-uploads the
    same bytes); a file given by the config keeps its path, which must exist on every node (or be a URI).
    """
    local_root = ctx.output_dir.resolve()
    tiny = ctx.output_dir / TINY_DIR
    if tiny.is_dir() and ctx.output_uri != str(ctx.output_dir):
        fs, root = filesystem(f"{ctx.output_uri}/{TINY_DIR}")
        fs.put(str(tiny), root, recursive=True)

    def where(path: str) -> str:
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(local_root):
            return path
        return f"{ctx.output_uri.rstrip('/')}/{resolved.relative_to(local_root).as_posix()}"

    return where


def captioning_pool(config: CaptionEvalConfig) -> WorkerPool:
    return WorkerPool("captioning actor", "actors", config.num_actors, config.cpus_per_actor, config.gpus_per_actor)


def caption_files(paths: list[str], checkpoint: StepOutput, cfg: CaptionEvalConfig, log: Any) -> dict[str, str]:
    """`{path: caption}` for every file, from the actor pool, `batch_size` files a call; ValueError naming
    every unreadable file."""
    started = time.monotonic()
    batches = [{"path": paths[i:i + cfg.batch_size]} for i in range(0, len(paths), cfg.batch_size)]
    captioned = map_on_actors(
        captioning_pool(cfg), CaptioningActor, batches, total=len(batches), unit="batches",
        constructor_kwargs={"checkpoint": checkpoint, "num_beams": cfg.num_beams,
                            "max_new_tokens": cfg.max_new_tokens, "device": "cuda" if cfg.gpus_per_actor else "cpu",
                            "num_threads": int(cfg.cpus_per_actor)})
    captions: dict[str, str] = {}
    errors: list[str] = []
    last_log = started
    done = 0
    for batch in captioned:
        for path, caption, error in zip(batch["path"], batch["caption"], batch["error"]):
            if error:
                errors.append(f"{path}: {error}")
            else:
                captions[str(path)] = str(caption)
        done += len(batch["path"])
        if time.monotonic() - last_log >= _PROGRESS_EVERY_S:
            last_log = time.monotonic()
            log.info("captioned %d/%d images, %s", done, len(paths),
                     rate_and_eta(done, len(paths), last_log - started, "images"))
    if errors:
        raise ValueError(f"caption_eval: {len(errors)} evaluation images cannot be read; fix or remove them from "
                         f"the set: {'; '.join(errors[:5])}")
    lost = set(paths) - captions.keys()
    if lost:
        raise RuntimeError(f"caption_eval: the actor pool returned no row for {len(lost)} images "
                           f"(e.g. {sorted(lost)[:3]})")
    elapsed = time.monotonic() - started
    log.info("captioned %d images in %.1fs (%.2f images/s, model loads included)", len(paths), elapsed,
             len(paths) / max(elapsed, 1e-9))
    return captions


def write_sample_captions(path: Path, table: Any) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "file_name", "caption", "reference"])
        for row in table.to_pylist():
            writer.writerow([row["image_id"], row["file_name"], row["caption"], row["references"][0]])


def _given_paths(cfg: CaptionEvalConfig) -> list[tuple[str, str]]:
    given = [(f"caption_eval.{n}", getattr(cfg, n)) for n in ("images_dir", "captions_json") if getattr(cfg, n)]
    for i, bench in enumerate(cfg.vqa):
        paths = {**bench.eval_paths(), **bench.exemplar_paths()}
        given += [(f"caption_eval.vqa[{i}].{n}", v) for n, v in paths.items() if v]
    return given
