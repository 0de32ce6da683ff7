"""Where the `paper_mini` assets live and what each file is. Torch-free: the preset imports it.

The assets are written once per machine by `vlv.paper_mini.build` into `$VLV_PAPER_MINI_DIR`, else
`~/.cache/vlv/paper_mini/<BUILDER_VERSION>`. A new builder version (anything that changes a byte of the assets)
gets a new folder, so a machine never mixes assets of two versions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BUILDER_VERSION = "2"  # 2: photo URLs are canonical (http://tiny-site.invalid), served on any free port
ASSETS_DIR_ENV = "VLV_PAPER_MINI_DIR"
MANIFEST_FILE = "paper_mini_assets.json"

# img2dataset keys depend on the shard size, so the Gemini output's keys are written for this one.
SAMPLES_PER_SHARD = 8
# sha256 of the miniature Inception file (seeded random weights). The builder refuses to finish if the file it
# wrote hashes differently (a new torch serialisation format would): then bump BUILDER_VERSION and update this.
INCEPTION_SHA256 = "e0eb1da0e45ecc8297b427873483ad240078c0467483283672101e907fb99ea9"


def default_assets_dir() -> Path:
    """`$VLV_PAPER_MINI_DIR` if set, else the per-user cache folder of this builder version."""
    override = os.environ.get(ASSETS_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    return Path.home() / ".cache" / "vlv" / "paper_mini" / BUILDER_VERSION


@dataclass(frozen=True)
class PaperMiniAssets:
    """Every path the paper_mini preset points at, under one root folder."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    # -- models, each in the on-disk format the paper preset loads ---------------------------------------------
    @property
    def florence(self) -> Path:  # transformers-native Florence2ForConditionalGeneration + Florence2Processor files
        return self.root / "models" / "florence2_large_mini"

    @property
    def sd21(self) -> Path:  # StableDiffusionPipeline.save_pretrained folder
        return self.root / "models" / "sd21_base_mini"

    @property
    def sd35(self) -> Path:  # StableDiffusion3Pipeline.save_pretrained folder
        return self.root / "models" / "sd35_medium_mini"

    @property
    def qwen(self) -> Path:  # Qwen2ForCausalLM folder with the Qwen2 tokenizer files
        return self.root / "models" / "qwen2.5_3b_mini"

    @property
    def open_clip(self) -> Path:  # open_clip `local-dir:` folder, ViT-L/14 key layout
        return self.root / "models" / "open_clip_vit_l14_mini"

    @property
    def aesthetic_predictor(self) -> Path:  # LAION improved aesthetic predictor v2 state dict
        return self.root / "models" / "sac+logos+ava1-l14-linearMSE.pth"

    @property
    def inception(self) -> Path:  # pytorch-fid InceptionV3 state dict (seeded random)
        return self.root / "models" / "pt_inception-2015-12-05-paper-mini.pth"

    # -- data ------------------------------------------------------------------------------------------------
    @property
    def laion_metadata(self) -> Path:  # LAION-format parquet whose URLs point at `site`
        return self.root / "data" / "laion" / "part-00000.parquet"

    @property
    def site(self) -> Path:  # the photos those URLs name, served on a free 127.0.0.1 port by the download step
        return self.root / "data" / "laion_site"

    @property
    def gemini_output(self) -> Path:  # Gemini Batch API output JSONL keyed as img2dataset keys the photos
        return self.root / "data" / "gemini" / "predictions.jsonl"

    @property
    def coco_images(self) -> Path:
        return self.root / "data" / "coco" / "val2014"

    @property
    def coco_captions(self) -> Path:
        return self.root / "data" / "coco" / "annotations" / "captions_val2014.json"

    @property
    def coco_train_images(self) -> Path:  # the exemplar splits' images (COCO train2014 names)
        return self.root / "data" / "coco" / "train2014"

    def vqa_file(self, benchmark: str, split: str, kind: str) -> Path:
        """`benchmark` vqav2 | okvqa, `split` val | train, `kind` questions | annotations (official names)."""
        names = {
            ("vqav2", "questions"): "v2_OpenEnded_mscoco_{split}2014_questions.json",
            ("vqav2", "annotations"): "v2_mscoco_{split}2014_annotations.json",
            ("okvqa", "questions"): "OpenEnded_mscoco_{split}2014_questions.json",
            ("okvqa", "annotations"): "mscoco_{split}2014_annotations.json",
        }
        return self.root / "data" / benchmark / names[(benchmark, kind)].format(split=split)
