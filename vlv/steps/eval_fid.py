"""Step `eval_fid`: reconstruction FID and caption FID on caption_eval's image set.

- Reconstruction FID (paper Tables 4-5): image -> stage-1 caption embeddings -> frozen SD sampling, once per CFG
  value in `recon_cfg_scales`. The official inference (train/Image_inference.py + models/VLV_stage1.py) samples
  with SD 2.1's stochastic DDPM scheduler, 50 steps, CFG 2.0; the paper's scaling table reports CFG 1 to 4. So the
  defaults are `recon_scheduler="ddpm"`, 50 steps, CFG [1, 2, 3, 4], headline (`fid_recon`) at CFG 2.
- Caption FID (paper Table 1): text captions -> a text-to-image pipeline (SD 3.5 Medium in bf16 as in the paper,
  SD 2.1, or the tiny one), once per CFG value in `cfg_scales`. The captions scored are caption_eval's (VLV's), and
  the same way, through the same pipeline, images, noise seeds and real statistics, every `other_captioners` file
  (another captioner's output: JSONL/CSV with `image_id` or `file_name` and `caption`, read like eval_arena's) and,
  with `reference_captions`, the first COCO reference caption of each image (captioner `coco_reference`). So the
  table compares captioners like for like, as the paper's Table 1 does.
Every CFG pass of a generator uses the same per-batch noise seeds, so CFG values differ by guidance only.
Both against the ORIGINAL image files (pytorch-fid reads them as they are). Generation and Inception features
run together in Ray tasks (`vlv.eval.fid_generation`); real-image statistics come from
`distributed_feature_stats` and are cached in the store's cache folder by content hash. Outputs: `fid.csv` (one
row per FID: kind, captioner, CFG, ...), `recon_grid.png` (originals, then one row per reconstruction CFG) and
`caption_grid.png` (originals, one row per caption CFG, then each other captioner at the headline CFG); metrics
`fid_recon_cfg<k>`, `fid_recon` (at `headline_cfg`), `fid_cfg<k>` and `fid` (VLV's caption FID at `headline_cfg`),
`fid_caption_<captioner>_cfg<k>` and `fid_caption_<captioner>` for the other captioners. A headline CFG missing
from a list falls back to that list's first value. With Inception weights other than the official file (tiny:
seeded random; paper_mini: a seeded random file checked against its own hash) every number is marked as not
comparable.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vlv.engine.step import OutputFile, Resources, Step, StepContext, StepOutput, StepResult, WorkerPool
from vlv.engine.storage import checked_on_this_machine
from vlv.eval.arena import CAPTIONER_NAME, VLV, captions_for, read_captioner_file
from vlv.eval.eval_sets import read_eval_sets
from vlv.eval.text_to_image import TextToImageSpec
from vlv.models.image_files import image_as_array
from vlv.paths import safe_child
from vlv.steps.caption_eval import CAPTIONS

# pytorch-fid's pt_inception-2015-12-05-6726825d.pth: its sha256 starts with the suffix of its name (the same value as
# vlv.eval.inception.FID_WEIGHTS_SHA256_PREFIX, repeated here because this module must not import torch).
OFFICIAL_INCEPTION_SHA256 = "6726825d"
COCO_REFERENCE = "coco_reference"  # the captioner name of the COCO reference captions (`reference_captions`)
SD35_FLOAT16 = ("eval_fid.t2i_dtype=float16 with t2i_model=sd35_medium: SD 3.5's T5-XXL text encoder overflows in "
                "float16 (NaN or black images); its model card runs the pipeline in bfloat16: --set "
                "eval_fid.t2i_dtype=bfloat16 (or float32)")
NOT_COMPARABLE = ("NOT COMPARABLE: the Inception weights are not pytorch-fid's official file (tiny / paper_mini "
                  "presets: seeded random weights); these numbers mean nothing and compare with no published FID")


@dataclass
class FidCaptionerConfig:
    """Another captioner's captions for caption FID: a plain JSONL or CSV file with `image_id` and/or `file_name`,
    and `caption` (the format eval_arena reads); it must caption every evaluated image."""

    name: str = ""  # in metric names (fid_caption_<name>): lowercase letters, digits, underscores
    path: str = ""

    def __post_init__(self) -> None:
        if not CAPTIONER_NAME.match(self.name) or self.name in (VLV, COCO_REFERENCE):
            raise ValueError(f"eval_fid.other_captioners[].name must be lowercase letters, digits and '_' and not "
                             f"'{VLV}' (caption_eval's captions) or '{COCO_REFERENCE}' (eval_fid.reference_captions), "
                             f"got {self.name!r}")
        if not self.path:
            raise ValueError(f"eval_fid.other_captioners[{self.name}].path is empty: give its captions file")


@dataclass
class EvalFidConfig:
    # pytorch-fid's pt_inception-2015-12-05-6726825d.pth: file, folder holding it, or "" = the torch hub cache.
    inception_weights: str = ""
    # What the weights file's sha256 must start with: the official file's prefix; paper_mini sets its own file's hash.
    inception_sha256: str = OFFICIAL_INCEPTION_SHA256
    inception_random_seed: int | None = None  # set (tiny): seeded random Inception, numbers not comparable
    inception_batch_size: int = 50
    max_images: int = 0  # the first N images of caption_eval's set (0 = all of them)
    reconstruction: bool = True
    recon_num_steps: int = 50  # sampling steps of the frozen SD decoder (official inference: 50)
    # "ddpm": SD 2.1's stochastic DDPM scheduler, as the official inference; "ddim": deterministic DDIM (eta 0).
    recon_scheduler: Literal["ddpm", "ddim"] = "ddpm"
    recon_cfg_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0])  # paper: CFG 1-4
    t2i_model: Literal["sd21", "sd35_medium", "tiny"] = "sd21"  # paper Table 1 used sd35_medium
    # A diffusers pipeline folder, or a hub id loaded when online: stabilityai/stable-diffusion-3.5-medium, ...
    t2i_weights: str = ""
    t2i_num_steps: int = 40
    t2i_image_size: int = 512  # sd35_medium: 1024, its native size (multiples of 16)
    t2i_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # sd35_medium: bfloat16 (float16 is refused)
    cfg_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0])
    # Other captioners scored through the same caption-FID path (paper Table 1: GPT-4o, Gemini 2.0 Flash, ...).
    other_captioners: list[FidCaptionerConfig] = field(default_factory=list)
    reference_captions: bool = False  # also score each image's first COCO reference caption (`coco_reference`)
    headline_cfg: float = 2.0  # reported as `fid` and `fid_recon`: paper Table 1's column, the official CFG 2.0
    generation_batch_size: int = 4
    num_workers: int = 1  # Ray tasks per generator (and for the real-image features)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    grid_images: int = 6
    seed: int = 0  # sampling noise (per batch), and the random init of the tiny text-to-image pipeline

    def __post_init__(self) -> None:
        if self.t2i_model == "tiny" and self.t2i_weights:
            raise ValueError("eval_fid.t2i_weights is ignored while eval_fid.t2i_model='tiny'; to generate with "
                             "those weights add --set eval_fid.t2i_model=sd21 (or sd35_medium)")
        if self.inception_random_seed is not None and self.inception_weights:
            raise ValueError("eval_fid.inception_weights is ignored while eval_fid.inception_random_seed is set "
                             "(a random Inception); to use those weights add --set eval_fid.inception_random_seed=null")
        if self.max_images < 0 or self.grid_images < 0:
            raise ValueError("eval_fid.max_images and eval_fid.grid_images must be >= 0")
        for name in ("recon_num_steps", "t2i_num_steps", "generation_batch_size", "num_workers",
                     "inception_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval_fid.{name} must be >= 1, got {getattr(self, name)}")
        if self.t2i_image_size < 8 or self.t2i_image_size % 8:
            raise ValueError(f"eval_fid.t2i_image_size must be a multiple of 8, got {self.t2i_image_size}")
        if self.t2i_model == "sd35_medium":
            if self.t2i_image_size % 16:  # 8x VAE downscale, then 2x2 patches
                raise ValueError(f"eval_fid.t2i_image_size must be a multiple of 16 with t2i_model=sd35_medium (its "
                                 f"native size is 1024), got {self.t2i_image_size}")
            if self.t2i_dtype == "float16":
                raise ValueError(SD35_FLOAT16)
        names = [c.name for c in self.other_captioners]
        if len(set(names)) != len(names):
            raise ValueError(f"eval_fid.other_captioners names must be distinct, got {names}")
        _check_cfg_list("cfg_scales", self.cfg_scales)
        _check_cfg_list("recon_cfg_scales", self.recon_cfg_scales)
        if self.recon_scheduler not in ("ddpm", "ddim"):
            raise ValueError(f"eval_fid.recon_scheduler must be 'ddpm' (the official inference) or 'ddim', got "
                             f"{self.recon_scheduler!r}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError("eval_fid.cpus_per_worker must be > 0 and eval_fid.gpus_per_worker >= 0")
        if not re.fullmatch(r"[0-9a-f]{8,64}", self.inception_sha256):
            raise ValueError(f"eval_fid.inception_sha256 must be the first 8 to 64 lowercase hex digits of the "
                             f"weights file's sha256 (official file: {OFFICIAL_INCEPTION_SHA256}), got "
                             f"{self.inception_sha256!r}")

    def inception_spec(self) -> Any:
        from vlv.eval.inception import InceptionSpec

        return InceptionSpec(weights=self.inception_weights, random_init_seed=self.inception_random_seed,
                             config_field="eval_fid.inception_weights", batch_size=self.inception_batch_size,
                             weights_sha256=self.inception_sha256)

    def text_to_image_spec(self) -> TextToImageSpec:
        return TextToImageSpec(model=self.t2i_model, weights=self.t2i_weights, image_size=self.t2i_image_size,
                               num_steps=self.t2i_num_steps, dtype=self.t2i_dtype, seed=self.seed)

    def headline_scale(self) -> float:
        return self.headline_cfg if self.headline_cfg in self.cfg_scales else self.cfg_scales[0]

    def recon_headline_scale(self) -> float:
        return self.headline_cfg if self.headline_cfg in self.recon_cfg_scales else self.recon_cfg_scales[0]


def _check_cfg_list(name: str, scales: list[float]) -> None:
    if not scales or any(not math.isfinite(s) or s < 1 for s in scales):
        raise ValueError(f"eval_fid.{name} must be a non-empty list of numbers >= 1, got {scales}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"eval_fid.{name} has repeated values: {scales}")


@dataclass(frozen=True)
class FidRow:
    kind: str  # reconstruction | caption
    captioner: str  # whose captions (caption rows): vlv, coco_reference, an other_captioners name; "" otherwise
    label: str  # metric suffix: recon_cfg2, cfg2, caption_gpt4o_cfg2, ...
    guidance_scale: float
    num_images: int
    fid: float
    generator: str
    num_steps: int
    sampler: str  # ddpm | ddim for reconstructions; the pipeline's own scheduler for captions


class EvalFidStep(Step[EvalFidConfig]):
    name = "eval_fid"
    upstream = ("train_stage1", "caption_eval")
    code_version = "3"  # 2: reconstructions per CFG value, DDPM by default; 3: other captioners, fid.csv captioner
    description = "Reconstruction FID and caption FID (per captioner and CFG value) against the original images"
    system_metrics = True
    outputs = (OutputFile("fid.csv", "every FID with its generator, guidance scale, steps and image count"),)

    def resources(self, config: EvalFidConfig) -> Resources:
        return Resources(num_cpus=0)  # generation and feature tasks ask for their own CPUs/GPUs

    def worker_pools(self, config: EvalFidConfig) -> tuple[WorkerPool, ...]:
        return (generation_pool(config), frechet_pool(config))

    def weight_paths(self, config: EvalFidConfig) -> dict[str, str]:
        paths = {}
        if config.inception_random_seed is None and config.inception_weights:
            paths["eval_fid.inception_weights"] = config.inception_weights
        if config.t2i_model != "tiny":
            paths["eval_fid.t2i_weights"] = config.t2i_weights
        paths.update({f"eval_fid.other_captioners[{c.name}].path": c.path for c in config.other_captioners})
        return paths

    def preflight(self, config: EvalFidConfig) -> None:
        from vlv.eval.inception import resolve_inception_weights

        if config.inception_random_seed is None and (not config.inception_weights
                                                     or checked_on_this_machine(config.inception_weights)):
            resolve_inception_weights(config.inception_weights, config_field="eval_fid.inception_weights")
        if config.t2i_model != "tiny":
            if not config.t2i_weights:
                raise ValueError(f"eval_fid.t2i_weights is not set: caption FID with t2i_model={config.t2i_model} "
                                 "needs the pipeline's local folder or hub id (e.g. "
                                 "stabilityai/stable-diffusion-3.5-medium, stabilityai/stable-diffusion-2-1-base)")
            if checked_on_this_machine(config.t2i_weights) and config.t2i_weights.startswith(("/", ".", "~")) \
                    and not Path(config.t2i_weights).expanduser().exists():
                raise ValueError(f"eval_fid.t2i_weights={config.t2i_weights!r} does not exist")
        for captioner in config.other_captioners:
            if checked_on_this_machine(captioner.path) and not Path(captioner.path).is_file():
                raise ValueError(f"eval_fid.other_captioners[{captioner.name}].path={captioner.path!r} does not exist")

    def run(self, ctx: StepContext[EvalFidConfig]) -> StepResult:
        from vlv.eval.fid_generation import (
            CaptionGenerator,
            ReconstructionGenerator,
            caption_label,
            fids_against,
            generated_feature_stats,
            real_image_stats,
            recon_label,
        )

        cfg = ctx.config
        spec = cfg.inception_spec()
        images = evaluation_images(ctx.input("caption_eval"), cfg.max_images)
        if len(images) < 2:
            raise ValueError(f"eval_fid needs at least 2 images for a covariance, caption_eval has {len(images)}")
        sources = caption_sources(cfg, ctx.input("caption_eval"), images)
        if not spec.comparable:
            ctx.log.warning(NOT_COMPARABLE)
        pool = generation_pool(cfg)
        workers = dict(num_workers=pool.count, num_cpus_per_worker=pool.cpus, num_gpus_per_worker=pool.gpus)
        real = real_image_stats([image.path for image in images], spec, cache_uri=ctx.cache_uri, **workers)
        ctx.log.info("real-image statistics of %d images (%s, key %s)", real.stats.n,
                     "from cache" if real.cached else "computed", real.key)
        ctx.log.debug("caption FID: %s, %d steps, %d px, %s, CFG %s; captioners %s", cfg.t2i_model,
                      cfg.t2i_num_steps, cfg.t2i_image_size, cfg.t2i_dtype, cfg.cfg_scales,
                      ", ".join(s.name for s in sources))
        generators: list[Any] = [CaptionGenerator(cfg.text_to_image_spec(), tuple(cfg.cfg_scales), sources)]
        if cfg.reconstruction:
            ctx.log.debug("reconstructions: %s sampler, %d steps, CFG %s", cfg.recon_scheduler, cfg.recon_num_steps,
                          cfg.recon_cfg_scales)
            generators.insert(0, ReconstructionGenerator(ctx.input("train_stage1"), cfg.recon_num_steps,
                                                         tuple(cfg.recon_cfg_scales), cfg.recon_scheduler))
        generated = generated_feature_stats(generators, images, spec, batch_size=cfg.generation_batch_size,
                                            seed=cfg.seed, keep_samples=cfg.grid_images, **workers)
        fids = fids_against(real.stats, generated.stats, num_cpus=frechet_pool(cfg).cpus)
        counts = {label: stats.n for label, stats in generated.stats.items()}
        rows = fid_rows(cfg, [s.name for s in sources], fids, counts)
        write_fid_csv(ctx.output_dir / "fid.csv", rows, comparable=spec.comparable)
        artifacts = ["fid.csv"]
        originals = {image.image_id: image.path for image in images}
        recon_scales = cfg.recon_cfg_scales if cfg.reconstruction else []
        if generated.sample_ids:
            note = "" if spec.comparable else " | random models (tiny / paper_mini): images mean nothing"
            sample_paths = [originals[i] for i in generated.sample_ids]
            if recon_scales:
                save_labelled_grid(ctx.output_dir / "recon_grid.png", sample_paths,
                                   [(f"recon CFG {s:g}", generated.samples[recon_label(s)]) for s in recon_scales],
                                   title=f"originals (top) | stage-1 reconstructions ({cfg.recon_scheduler}, "
                                         f"{cfg.recon_num_steps} steps), per CFG" + note)
                artifacts.append("recon_grid.png")
            headline = cfg.headline_scale()
            others = [(f"{s.name} CFG {headline:g}", generated.samples[caption_label(s.name, headline)])
                      for s in sources[1:]]
            save_labelled_grid(ctx.output_dir / "caption_grid.png", sample_paths,
                               [(f"CFG {s:g}", generated.samples[caption_label(VLV, s)]) for s in cfg.cfg_scales]
                               + others,
                               title=f"originals (top) | {cfg.t2i_model} from VLV's captions per CFG"
                                     + (", then other captioners'" if others else "") + note)
            artifacts.append("caption_grid.png")
        metrics = fid_metrics(cfg, rows)
        metrics["fid_images"] = float(len(images))
        metrics["fid_comparable"] = 1.0 if spec.comparable else 0.0
        metrics["fid_real_stats_cached"] = 1.0 if real.cached else 0.0
        ctx.log.info("FIDs%s: %s", "" if spec.comparable else " (NOT COMPARABLE)",
                     ", ".join(f"{row.label}={row.fid:.3f}" for row in rows))
        return StepResult(metrics=metrics, artifacts=artifacts)


def generation_pool(config: EvalFidConfig) -> WorkerPool:
    """The tasks that generate images and compute Inception features, one model load each: the images are split
    into `num_workers` chunks per generator (and for the real images), at most `num_workers` tasks at once."""
    return WorkerPool("generation + Inception task", "tasks", config.num_workers, config.cpus_per_worker,
                      config.gpus_per_worker)


def frechet_pool(config: EvalFidConfig) -> WorkerPool:
    """One task per FID (a 2048-d matrix square root each): the reconstruction and caption rows of fid.csv."""
    captioners = 1 + int(config.reference_captions) + len(config.other_captioners)
    count = len(config.recon_cfg_scales) * int(config.reconstruction) + captioners * len(config.cfg_scales)
    return WorkerPool("Frechet distance task", "tasks", count, min(1.0, config.cpus_per_worker))


def fid_rows(cfg: EvalFidConfig, captioners: list[str], fids: dict[str, float], counts: dict[str, int]
             ) -> list[FidRow]:
    """fid.csv's rows: reconstructions per CFG, then each captioner's caption FID per CFG (VLV first)."""
    from vlv.eval.fid_generation import caption_label, recon_label

    recon_scales = cfg.recon_cfg_scales if cfg.reconstruction else []
    rows = [FidRow("reconstruction", "", recon_label(s), s, counts[recon_label(s)], fids[recon_label(s)],
                   "stage1+frozen_sd", cfg.recon_num_steps, cfg.recon_scheduler) for s in recon_scales]
    return rows + [FidRow("caption", name, caption_label(name, s), s, counts[caption_label(name, s)],
                          fids[caption_label(name, s)], cfg.t2i_model, cfg.t2i_num_steps, "pipeline default")
                   for name in captioners for s in cfg.cfg_scales]


def fid_metrics(cfg: EvalFidConfig, rows: list[FidRow]) -> dict[str, float]:
    """`fid_<label>` per row; headlines at `headline_cfg`: `fid` (VLV), `fid_recon`, `fid_caption_<captioner>`."""
    from vlv.eval.fid_generation import caption_label, recon_label

    metrics = {f"fid_{row.label}": row.fid for row in rows}
    metrics["fid"] = metrics[f"fid_{caption_label(VLV, cfg.headline_scale())}"]
    if cfg.reconstruction:
        metrics["fid_recon"] = metrics[f"fid_{recon_label(cfg.recon_headline_scale())}"]
    for name in dict.fromkeys(row.captioner for row in rows if row.captioner not in ("", VLV)):
        metrics[f"fid_caption_{name}"] = metrics[f"fid_{caption_label(name, cfg.headline_scale())}"]
    return metrics


def caption_sources(cfg: EvalFidConfig, caption_eval: StepOutput, images: list[Any]) -> tuple[Any, ...]:
    """Whose captions caption FID scores: VLV's (caption_eval's), the COCO references, each other captioner's file.

    Every captioner must caption every evaluated image, so all of them are scored on the same images against the
    same real statistics; a file that misses some is an error naming how many and the fix.
    """
    from vlv.eval.fid_generation import CaptionSource

    sources = [CaptionSource(VLV)]
    wanted = {image.image_id for image in images}
    caption_set = caption_eval.read_table(CAPTIONS, columns=["image_id", "file_name", "references"]).to_pylist()
    caption_set = [row for row in caption_set if int(row["image_id"]) in wanted]
    if cfg.reference_captions:
        references = {int(r["image_id"]): " ".join(r["references"][0].split()) for r in caption_set
                      if r["references"]}
        _check_coverage("eval_fid.reference_captions", references, wanted,
                        "caption_eval's set has no reference caption for them (a COCO captions file lists at least one "
                        "per image); set eval_fid.reference_captions=false")
        sources.append(CaptionSource(COCO_REFERENCE, references))
    for captioner in cfg.other_captioners:
        captions = captions_for(caption_set, *read_captioner_file(captioner.path, captioner.name, section="eval_fid"))
        _check_coverage(f"eval_fid.other_captioners[{captioner.name}]", captions, wanted,
                        "caption every image of caption_eval's set (its ids are in eval_image_ids.json), or lower "
                        "eval_fid.max_images")
        sources.append(CaptionSource(captioner.name, captions))
    return tuple(sources)


def _check_coverage(setting: str, captions: dict[int, str], wanted: set[int], fix: str) -> None:
    missing = sorted(wanted - set(captions))
    if missing:
        raise ValueError(f"{setting} has captions for {len(wanted) - len(missing)} of the {len(wanted)} evaluated "
                         f"images (missing e.g. image ids {missing[:5]}): caption FID compares captioners on the same "
                         f"images; {fix}")


def evaluation_images(caption_eval: StepOutput, max_images: int) -> list[Any]:
    """caption_eval's caption set as `EvalImage`s (image path or URI + the generated caption), in file order.

    Images inside caption_eval's output (the tiny sets) are named by their place in the store, so the
    generation tasks read them on whichever node they run; images given by the config keep their paths.
    """
    from vlv.eval.fid_generation import EvalImage

    local = caption_eval.local_folder().resolve()
    sets = read_eval_sets(local)
    table = caption_eval.read_table(CAPTIONS, columns=["image_id", "file_name", "caption"])
    rows = table.to_pylist()[:max_images or None]

    def reachable(path: Path) -> str:
        resolved = path.resolve()
        return caption_eval.path(resolved.relative_to(local).as_posix()) if resolved.is_relative_to(local) \
            else str(path)

    return [EvalImage(int(r["image_id"]), reachable(safe_child(sets.images_dir, r["file_name"], "COCO file_name")),
                      str(r["caption"]))
            for r in rows]


def write_fid_csv(path: Path, rows: list[FidRow], *, comparable: bool) -> None:
    note = "" if comparable else NOT_COMPARABLE
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kind", "captioner", "metric", "guidance_scale", "num_images", "fid", "generator",
                         "num_steps", "sampler", "comparable", "note"])
        for row in rows:
            writer.writerow([row.kind, row.captioner, f"fid_{row.label}", f"{row.guidance_scale:g}", row.num_images,
                             f"{row.fid:.6f}", row.generator, row.num_steps, row.sampler, str(comparable).lower(),
                             note])


def save_labelled_grid(path: Path, original_paths: list[str], rows: list[tuple[str, list[Any]]], *, title: str,
                       cell: int = 128) -> None:
    """One PNG: a title line, the originals (square centre crops) on top, one row per generated set below."""
    import numpy as np
    from PIL import Image, ImageDraw

    def fit(array: Any) -> Any:
        return np.asarray(Image.fromarray(np.asarray(array, dtype=np.uint8)).resize((cell, cell),
                                                                                     Image.Resampling.BICUBIC))

    columns = len(original_paths)
    labels = ["original"] + [label for label, _ in rows]
    grid_rows = [[fit(image_as_array(p, cell)) for p in original_paths]] + [[fit(a) for a in images]
                                                                            for _, images in rows]
    label_width, header, gap = 110, 18, 2
    canvas = Image.new("RGB", (label_width + columns * (cell + gap), header + len(grid_rows) * (cell + gap)),
                       "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 3), title, fill="black")
    for r, (label, images) in enumerate(zip(labels, grid_rows)):
        top = header + r * (cell + gap)
        draw.text((4, top + cell // 2 - 6), label, fill="black")
        for c, image in enumerate(images[:columns]):
            canvas.paste(Image.fromarray(image), (label_width + c * (cell + gap), top))
    canvas.save(path)
