"""Build the paper_mini assets once per machine: deterministic, atomic, idempotent, safe under concurrency.

`ensure_paper_mini_assets()` returns at once when the folder is complete (its manifest, written last, lists every
file with its size, and the sizes match). Otherwise it takes an exclusive lock beside the folder (a second process
waits, then finds the folder complete), builds everything into a temporary sibling folder and renames it into
place in one step, so a killed build leaves nothing that looks finished. Every model and file is a function of
the seed: two builds give the same bytes (the manifest's sha256 of every file shows it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

from vlv.data.laion import MetadataFilter
from vlv.paper_mini import eval_data, laion_data
from vlv.paper_mini.layout import (
    BUILDER_VERSION,
    INCEPTION_SHA256,
    MANIFEST_FILE,
    SAMPLES_PER_SHARD,
    PaperMiniAssets,
    default_assets_dir,
)

log = logging.getLogger("vlv.paper_mini")

SEED = 0
NUM_PHOTOS = 32  # good photos on the loopback site (plus the broken and filtered rows)
TRAIN_IMAGE_SIZE = 384  # the paper's training image size: the aesthetic predictor is calibrated on photos so cropped


def ensure_paper_mini_assets(root: str | Path | None = None) -> PaperMiniAssets:
    """The complete asset folder at `root` (default: `default_assets_dir()`), built first if it is not there."""
    assets = PaperMiniAssets(Path(root).expanduser().resolve() if root else default_assets_dir())
    if is_complete(assets):
        log.info("paper_mini: using the miniature models and data in %s", assets.root)
        return assets
    assets.root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(assets.root.parent / f".{assets.root.name}.lock"):
        if is_complete(assets):  # another process built it while this one waited
            log.info("paper_mini: using the miniature models and data in %s", assets.root)
            return assets
        _check_target_free(assets.root)
        log.info("paper_mini: building the miniature models and data in %s (once per machine; builder version "
                 "%s)", assets.root, BUILDER_VERSION)
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{assets.root.name}.building-", dir=assets.root.parent))
        try:
            build_assets(PaperMiniAssets(staging), seed=SEED)
            if assets.root.is_dir():
                assets.root.rmdir()  # empty (checked above); rename cannot replace a non-empty folder anyway
            os.rename(staging, assets.root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("paper_mini: assets built in %.1fs (%.1f MB)", time.monotonic() - started,
                 _manifest(assets)["total_bytes"] / 1e6)
    return assets


def is_complete(assets: PaperMiniAssets) -> bool:
    """The manifest exists, is of this builder version, and every file it lists is there with its size."""
    try:
        manifest = _manifest(assets)
    except (OSError, ValueError):
        return False
    if manifest.get("builder_version") != BUILDER_VERSION:
        return False
    for relative, entry in manifest["files"].items():
        path = assets.root / relative
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
    return True


def build_assets(assets: PaperMiniAssets, *, seed: int) -> dict:
    """Write every asset under `assets.root` (an empty folder); the manifest last. Returns the manifest."""
    from vlv.paper_mini import generative_models, offline_tokenizers, vision_models

    started = time.monotonic()
    scratch = assets.root / ".scratch"
    timings: dict[str, float] = {}

    def timed(name: str, start: float) -> None:
        timings[name] = round(time.monotonic() - start, 2)
        log.info("paper_mini: %s written (%.1fs)", name, timings[name])

    t = time.monotonic()
    texts = offline_tokenizers.corpus(seed)
    image_token_id = offline_tokenizers.write_florence_tokenizer(scratch / "florence_tokenizer", texts,
                                                                 vision_models.FLORENCE_BPE_SIZE)
    vision_models.write_florence(assets.florence, scratch / "florence_tokenizer", image_token_id, seed + 1)
    timed("Florence-2 (model, processor, BART tokenizer)", t)
    t = time.monotonic()
    eos_id = offline_tokenizers.write_qwen_tokenizer(scratch / "qwen_tokenizer", texts,
                                                     generative_models.QWEN_BPE_SIZE)
    generative_models.write_qwen(assets.qwen, scratch / "qwen_tokenizer", eos_id, seed + 2)
    timed("Qwen2.5 (model, Qwen2 tokenizer)", t)
    t = time.monotonic()
    generative_models.write_sd21(assets.sd21, seed + 3)
    timed("SD 2.1 base pipeline", t)
    t = time.monotonic()
    generative_models.write_sd35(assets.sd35, texts, seed + 4)
    timed("SD 3.5 Medium pipeline", t)
    t = time.monotonic()
    rule = MetadataFilter()  # the paper's pre-filter (prepare_metadata's defaults)
    laion = laion_data.write_laion_data(assets, num_photos=NUM_PHOTOS, rule=rule, samples_per_shard=SAMPLES_PER_SHARD,
                                        image_size=TRAIN_IMAGE_SIZE, seed=seed)
    timed("LAION metadata, photo site, Gemini output", t)
    t = time.monotonic()
    vision_models.write_open_clip(assets.open_clip, seed + 5)
    scores = vision_models.write_aesthetic_predictor(assets.aesthetic_predictor, assets.open_clip, laion.photos,
                                                     seed + 6)
    timed("open_clip ViT-L/14 and the aesthetic predictor", t)
    t = time.monotonic()
    vision_models.write_inception(assets.inception, seed + 7)
    inception_sha256 = _sha256(assets.inception)
    if inception_sha256 != INCEPTION_SHA256:
        raise RuntimeError(f"the miniature Inception file hashes to {inception_sha256}, not the {INCEPTION_SHA256} "
                           f"the paper_mini preset expects (torch serialises differently?): set "
                           f"vlv.paper_mini.layout.INCEPTION_SHA256 to the new hash and bump BUILDER_VERSION")
    timed("Inception", t)
    t = time.monotonic()
    eval_counts = eval_data.write_eval_sets(assets, seed)
    timed("COCO and VQA sets", t)
    shutil.rmtree(scratch)

    files = {str(path.relative_to(assets.root)): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
             for path in sorted(assets.root.rglob("*")) if path.is_file()}
    manifest = {
        "builder_version": BUILDER_VERSION, "seed": seed, "seconds": round(time.monotonic() - started, 1),
        "seconds_by_part": timings, "total_bytes": sum(entry["bytes"] for entry in files.values()),
        "inception_sha256": inception_sha256, "laion_rows": laion.metadata_rows, "good_photos": laion.good_photos,
        "gemini_lines": laion.caption_lines, "aesthetic_scores": [round(float(s), 3) for s in scores],
        "eval_sets": eval_counts, "files": files,
    }
    assets.manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def _manifest(assets: PaperMiniAssets) -> dict:
    data = json.loads(assets.manifest.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ValueError(f"{assets.manifest} is not a paper_mini manifest")
    return data


def _check_target_free(root: Path) -> None:
    """Never replace a folder we did not build: only a missing or empty one becomes the asset folder."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"{root} exists but is not a complete paper_mini asset folder (no valid {MANIFEST_FILE}); "
                         f"delete it to rebuild, or point $VLV_PAPER_MINI_DIR at another folder")


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
