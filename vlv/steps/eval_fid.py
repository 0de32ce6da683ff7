"""Step `eval_fid`: reconstruction FID and caption FID on caption_eval's image set.

- Reconstruction FID (paper Tables 4-5): image -> stage-1 caption embeddings -> frozen SD sampling, once per CFG
  value in `recon_cfg_scales`. The official inference (train/Image_inference.py + models/VLV_stage1.py) samples
  with SD 2.1's stochastic DDPM scheduler, 50 steps, CFG 2.0; the paper's scaling table reports CFG 1 to 4. So the
  defaults are `recon_scheduler="ddpm"`, 50 steps, CFG [1, 2, 3, 4], headline (`fid_recon`) at CFG 2.
- Caption FID (paper Table 1): caption_eval's text captions -> a text-to-image pipeline (SD 2.1 by default, SD 3.5
  Medium as in the paper, or the tiny one), once per CFG value in `cfg_scales`.
Every CFG pass of a generator uses the same per-batch noise seeds, so CFG values differ by guidance only.
Both against the ORIGINAL image files (pytorch-fid reads them as they are). Generation and Inception features
run together in Ray tasks (`vlv.eval.fid_generation`); real-image statistics come from
`distributed_feature_stats` and are cached in the store's cache folder by content hash. Outputs: `fid.csv` (one
row per FID), `recon_grid.png` (originals, then one row per reconstruction CFG) and `caption_grid.png`
(originals, then one row per caption CFG); metrics `fid_recon_cfg<k>`, `fid_recon` (at `headline_cfg`),
`fid_cfg<k>` and `fid` (caption FID at `headline_cfg`). A headline CFG missing from a list falls back to that list's
first value. With Inception weights other than the official file (tiny: seeded random; paper_mini: a seeded random
file checked against its own hash) every number is marked as not comparable.
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
from vlv.paths import safe_child
from vlv.steps.caption_eval import CAPTIONS

# pytorch-fid's pt_inception-2015-12-05-6726825d.pth: its sha256 starts with the suffix of its name (the same value as
# vlv.eval.inception.FID_WEIGHTS_SHA256_PREFIX, repeated here because this module must not import torch).
OFFICIAL_INCEPTION_SHA256 = "6726825d"
NOT_COMPARABLE = ("NOT COMPARABLE: the Inception weights are not pytorch-fid's official file (tiny / paper_mini "
                  "presets: seeded random weights); these numbers mean nothing and compare with no published FID")


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
    t2i_weights: str = ""  # local folder or hub id, e.g. stabilityai/stable-diffusion-2-1-base
    t2i_num_steps: int = 40
    t2i_image_size: int = 512
    t2i_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    cfg_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0])
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

    def text_to_image_spec(self) -> Any:
        from vlv.eval.text_to_image import TextToImageSpec

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
    label: str  # metric suffix: recon_cfg2, cfg2, ...
    guidance_scale: float
    num_images: int
    fid: float
    generator: str
    num_steps: int
    sampler: str  # ddpm | ddim for reconstructions; the pipeline's own scheduler for captions


class EvalFidStep(Step[EvalFidConfig]):
    name = "eval_fid"
    upstream = ("train_stage1", "caption_eval")
    code_version = "2"  # 2: reconstructions per CFG value, DDPM by default
    description = "Reconstruction FID and caption FID (per CFG value) against the original images"
    system_metrics = True
    outputs = (OutputFile("fid.csv", "every FID with its generator, guidance scale, steps and image count"),)

    def resources(self, config: EvalFidConfig) -> Resources:
        return Resources(num_cpus=0)  # generation and feature tasks ask for their own CPUs/GPUs

    def worker_pools(self, config: EvalFidConfig) -> tuple[WorkerPool, ...]:
        return (WorkerPool("generation + Inception task", "tasks", config.num_workers, config.cpus_per_worker,
                           config.gpus_per_worker),)

    def weight_paths(self, config: EvalFidConfig) -> dict[str, str]:
        paths = {}
        if config.inception_random_seed is None and config.inception_weights:
            paths["eval_fid.inception_weights"] = config.inception_weights
        if config.t2i_model != "tiny":
            paths["eval_fid.t2i_weights"] = config.t2i_weights
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
                                 "stabilityai/stable-diffusion-2-1-base, stabilityai/stable-diffusion-3.5-medium)")
            if checked_on_this_machine(config.t2i_weights) and config.t2i_weights.startswith(("/", ".", "~")) \
                    and not Path(config.t2i_weights).expanduser().exists():
                raise ValueError(f"eval_fid.t2i_weights={config.t2i_weights!r} does not exist")

    def run(self, ctx: StepContext[EvalFidConfig]) -> StepResult:
        from vlv.eval.fid_generation import (
            CaptionGenerator,
            ReconstructionGenerator,
            cfg_label,
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
        if not spec.comparable:
            ctx.log.warning(NOT_COMPARABLE)
        workers = dict(num_workers=cfg.num_workers, num_cpus_per_worker=cfg.cpus_per_worker,
                       num_gpus_per_worker=cfg.gpus_per_worker)
        real = real_image_stats([image.path for image in images], spec, cache_uri=ctx.cache_uri, **workers)
        ctx.log.info("real-image statistics of %d images (%s, key %s)", real.stats.n,
                     "from cache" if real.cached else "computed", real.key)
        generators: list[Any] = [CaptionGenerator(cfg.text_to_image_spec(), tuple(cfg.cfg_scales))]
        if cfg.reconstruction:
            ctx.log.info("reconstructions: %s sampler, %d steps, CFG %s", cfg.recon_scheduler, cfg.recon_num_steps,
                         cfg.recon_cfg_scales)
            generators.insert(0, ReconstructionGenerator(ctx.input("train_stage1"), cfg.recon_num_steps,
                                                         tuple(cfg.recon_cfg_scales), cfg.recon_scheduler))
        generated = generated_feature_stats(generators, images, spec, batch_size=cfg.generation_batch_size,
                                            seed=cfg.seed, keep_samples=cfg.grid_images, **workers)
        fids = fids_against(real.stats, generated.stats, num_cpus=min(1.0, cfg.cpus_per_worker))
        recon_scales = cfg.recon_cfg_scales if cfg.reconstruction else []
        rows = [FidRow("reconstruction", recon_label(s), s, generated.stats[recon_label(s)].n, fids[recon_label(s)],
                       "stage1+frozen_sd", cfg.recon_num_steps, cfg.recon_scheduler) for s in recon_scales]
        rows += [FidRow("caption", cfg_label(s), s, generated.stats[cfg_label(s)].n, fids[cfg_label(s)],
                        cfg.t2i_model, cfg.t2i_num_steps, "pipeline default") for s in cfg.cfg_scales]
        write_fid_csv(ctx.output_dir / "fid.csv", rows, comparable=spec.comparable)
        artifacts = ["fid.csv"]
        originals = {image.image_id: image.path for image in images}
        if generated.sample_ids:
            note = "" if spec.comparable else " | random models (tiny / paper_mini): images mean nothing"
            sample_paths = [originals[i] for i in generated.sample_ids]
            if recon_scales:
                save_labelled_grid(ctx.output_dir / "recon_grid.png", sample_paths,
                                   [(f"recon CFG {s:g}", generated.samples[recon_label(s)]) for s in recon_scales],
                                   title=f"originals (top) | stage-1 reconstructions ({cfg.recon_scheduler}, "
                                         f"{cfg.recon_num_steps} steps), per CFG" + note)
                artifacts.append("recon_grid.png")
            save_labelled_grid(ctx.output_dir / "caption_grid.png", sample_paths,
                               [(f"CFG {s:g}", generated.samples[cfg_label(s)]) for s in cfg.cfg_scales],
                               title=f"originals (top) | {cfg.t2i_model} from captions, per CFG" + note)
            artifacts.append("caption_grid.png")
        metrics = {f"fid_{row.label}": row.fid for row in rows}
        metrics["fid"] = fids[cfg_label(cfg.headline_scale())]
        if recon_scales:
            metrics["fid_recon"] = fids[recon_label(cfg.recon_headline_scale())]
        metrics["fid_images"] = float(len(images))
        metrics["fid_comparable"] = 1.0 if spec.comparable else 0.0
        metrics["fid_real_stats_cached"] = 1.0 if real.cached else 0.0
        ctx.log.info("FIDs%s: %s", "" if spec.comparable else " (NOT COMPARABLE)",
                     ", ".join(f"{row.label}={row.fid:.3f}" for row in rows))
        return StepResult(metrics=metrics, artifacts=artifacts)


def evaluation_images(caption_eval: StepOutput, max_images: int) -> list[Any]:
    """caption_eval's caption set as `EvalImage`s (image path or URI + the generated caption), in file order.

    Images inside caption_eval's output (the tiny sets) are named by their place in the store, so the
    generation tasks read them on whichever node they run; images given by the config keep their paths.
    """
    from vlv.eval.eval_sets import read_eval_sets
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
        writer.writerow(["kind", "metric", "guidance_scale", "num_images", "fid", "generator", "num_steps",
                         "sampler", "comparable", "note"])
        for row in rows:
            writer.writerow([row.kind, f"fid_{row.label}", f"{row.guidance_scale:g}", row.num_images,
                             f"{row.fid:.6f}", row.generator, row.num_steps, row.sampler, str(comparable).lower(),
                             note])


def save_labelled_grid(path: Path, original_paths: list[str], rows: list[tuple[str, list[Any]]], *, title: str,
                       cell: int = 128) -> None:
    """One PNG: a title line, the originals (square centre crops) on top, one row per generated set below."""
    import numpy as np
    from PIL import Image, ImageDraw

    from vlv.models.image_files import image_as_array

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
