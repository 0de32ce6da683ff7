"""The `paper_mini` preset's assets: the paper preset's model classes and on-disk formats at miniature sizes.

Every model is a small, seeded, randomly initialised model of the same class as the paper's, saved in the exact
format the paper preset loads (Florence-2, SD 2.1 base, SD 3.5 Medium, Qwen2.5, open_clip ViT-L/14, the LAION
aesthetic predictor, the pytorch-fid Inception), beside LAION-format metadata for photos served on loopback,
Gemini Batch API output for them, and COCO / VQAv2 / OK-VQA files in the official formats. So the whole paper
path, loaders included, runs on a CPU in minutes. Numbers from these models mean nothing.

`layout` (torch-free) names the files; `build` writes them once per machine.
"""

from vlv.paper_mini.layout import PaperMiniAssets, default_assets_dir

__all__ = ["PaperMiniAssets", "default_assets_dir"]
