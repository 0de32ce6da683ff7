"""open_clip image embedder: L2-normalised float32 image embeddings for the aesthetic predictor.

Two ways to build it:
- `pretrained`: an open_clip model (e.g. `ViT-L-14`) with weights found *locally*: a tag (`openai`) is looked
  up in the Hugging Face cache and in open_clip's URL cache, never downloaded, so a machine without the
  weights fails at once with the model name and the place to put the file. `local-dir:/folder` (open_clip's
  own schema: `open_clip_config.json` + weights) also works.
- `tiny-random`: a small ViT built from a config dict, seeded random weights, output width 768 so the real
  predictor structure applies. open_clip 3.3 has no "config dict" entry point, but `create_model(name,
  **model_kwargs)` applies the kwargs over the named config last, so passing `embed_dim`, `vision_cfg` and
  `text_cfg` replaces the whole architecture without registering a config file globally.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from vlv.engine.storage import local_weights

EmbedderMode = Literal["pretrained", "tiny-random"]

# A toy ViT: 32 px input, 4x4 patches of 8 px, 2 blocks of width 64; the text tower is as small as open_clip
# allows (it is built but never used). The projection to 768 keeps the predictor at its published width.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 768,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32,
                   "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    "quick_gelu": False,
}
# open_clip's defaults for the names below: where `create_model` would download a tag's weights to.
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_URL_CACHE_DEFAULT = "~/.cache/clip"


@dataclass(frozen=True)
class ClipWeights:
    """A locally available checkpoint plus the settings its tag implies (activation, preprocessing)."""

    path: str
    quick_gelu: bool = False
    preprocess_overrides: dict[str, Any] = field(default_factory=dict)
    torchscript: bool = False


def resolve_clip_weights(model_name: str, pretrained: str, cache_dir: str = "") -> ClipWeights | None:
    """Find the weights for `model_name` + `pretrained` (tag or file) on local disk, or raise ValueError.

    Returns None for `local-dir:` models, whose folder open_clip reads itself. Never touches the network.
    """
    import open_clip

    if model_name.startswith("local-dir:"):
        folder = Path(model_name.removeprefix("local-dir:"))
        if not (folder / "open_clip_config.json").is_file():
            raise ValueError(f"CLIP model {model_name}: {folder}/open_clip_config.json does not exist; a "
                             "local-dir: model is a folder with open_clip_config.json and its weights file")
        return None
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model '{model_name}'; e.g. ViT-L-14 (see open_clip.list_models())")
    if not pretrained:
        raise ValueError(f"CLIP model {model_name}: no pretrained tag or weights file given (e.g. 'openai')")
    if os.path.isfile(pretrained):
        return ClipWeights(path=pretrained, torchscript=_is_torchscript_archive(pretrained))
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(f"CLIP weights '{pretrained}' for {model_name} are neither a known tag ({tags}) nor "
                         "an existing file")
    candidates = _candidate_files(tag_cfg, cache_dir)
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
        raise ValueError(_missing_weights_message(model_name, pretrained, tag_cfg, candidates, cache_dir))
    overrides = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    return ClipWeights(path=found, quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                       preprocess_overrides=overrides, torchscript=_is_torchscript_archive(found))


def _candidate_files(tag_cfg: dict[str, Any], cache_dir: str) -> list[str]:
    """The files open_clip would have downloaded for this tag, in its order of preference."""
    candidates = []
    if tag_cfg.get("file"):
        candidates.append(str(tag_cfg["file"]))
    hf_hub = tag_cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        # open_clip's convention: "org/repo/" means its default file names, "org/repo/file.bin" one file
        # (with a .safetensors twin preferred, as in open_clip.pretrained.download_pretrained_from_hf).
        repo_id, filename = os.path.split(hf_hub)
        names = _HF_WEIGHT_FILES if not filename else (
            (filename[:-4] + ".safetensors", filename) if filename.endswith((".bin", ".pth")) else (filename,))
        for name in names:
            cached = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir or None)
            if isinstance(cached, str):
                candidates.append(cached)
    if tag_cfg.get("url"):
        url_cache = os.path.expanduser(cache_dir or _URL_CACHE_DEFAULT)
        candidates.append(os.path.join(url_cache, os.path.basename(tag_cfg["url"])))
    return candidates


def _missing_weights_message(model_name: str, tag: str, tag_cfg: dict[str, Any], candidates: list[str],
                             cache_dir: str) -> str:
    from huggingface_hub import constants

    ways = []
    if tag_cfg.get("hf_hub"):
        hub_cache = cache_dir or constants.HF_HUB_CACHE
        ways.append(f"the Hugging Face cache {hub_cache} holding {tag_cfg['hf_hub'].rstrip('/')} "
                    f"(`huggingface-cli download {tag_cfg['hf_hub'].rstrip('/')}` on a machine online)")
    if tag_cfg.get("url"):
        url_cache = os.path.expanduser(cache_dir or _URL_CACHE_DEFAULT)
        ways.append(f"{os.path.join(url_cache, os.path.basename(tag_cfg['url']))} (from {tag_cfg['url']})")
    looked = ", ".join(candidates) or "nothing cached"
    quick_gelu = f" (with model {model_name}-quickgelu for these weights)" if tag_cfg.get("quick_gelu") else ""
    return (f"CLIP weights for {model_name} '{tag}' are not on this machine (looked at: {looked}); they are "
            f"never downloaded at run time. Put them in {' or '.join(ways)}, or give the path of a local "
            f"checkpoint file instead of the tag{quick_gelu}")


def _is_torchscript_archive(path: str) -> bool:
    """OpenAI's original .pt files are TorchScript archives, which torch.load refuses with weights_only."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())


class ClipImageEmbedder:
    """An open_clip model's image tower plus its eval preprocessing; `embed` gives unit-norm float32 rows."""

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor], device: str = "cpu"):
        self.model = model.eval().to(device)
        self.preprocess = preprocess
        self.device = device
        self.embed_dim = int(model.visual.output_dim)

    @classmethod
    def pretrained(cls, model_name: str = "ViT-L-14", pretrained: str = "openai", cache_dir: str = "",
                   device: str = "cpu") -> ClipImageEmbedder:
        import open_clip

        if model_name.startswith("local-dir:"):  # the folder may be a store URI: fetch it to this node once
            model_name = "local-dir:" + local_weights(model_name.removeprefix("local-dir:"))
        if "://" in pretrained:  # a weights file in the store
            pretrained = local_weights(pretrained)
        weights = resolve_clip_weights(model_name, pretrained, cache_dir)
        if weights is None:  # local-dir: open_clip reads config and weights from the folder
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, device=device)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=weights.path, device=device, force_quick_gelu=weights.quick_gelu,
                weights_only=not weights.torchscript, **_preprocess_kwargs(weights.preprocess_overrides))
        return cls(model, preprocess, device)

    @classmethod
    def tiny_random(cls, seed: int, device: str = "cpu") -> ClipImageEmbedder:
        import open_clip

        config = dict(TINY_CLIP_CONFIG)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                "ViT-B-32", pretrained=None, device=device, **config)
        return cls(model, preprocess, device)

    def preprocess_one(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """One image as the model's input tensor; raises on images PIL or the transform cannot handle."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return self.preprocess(image.convert("RGB"))

    @torch.no_grad()
    def embed_tensors(self, pixels: torch.Tensor) -> np.ndarray:
        features = self.model.encode_image(pixels.to(self.device), normalize=True)
        return features.float().cpu().numpy().astype(np.float32, copy=False)

    def embed(self, images: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """(N, embed_dim) float32, each row of L2 norm 1."""
        if not images:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return self.embed_tensors(torch.stack([self.preprocess_one(img) for img in images]))


def _preprocess_kwargs(overrides: dict[str, Any]) -> dict[str, Any]:
    names = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
             "resize_mode": "image_resize_mode"}
    return {names[k]: v for k, v in overrides.items()}


def build_clip_embedder(mode: EmbedderMode, *, model_name: str = "ViT-L-14", pretrained: str = "openai",
                        cache_dir: str = "", seed: int = 0, device: str = "cpu") -> ClipImageEmbedder:
    if mode == "pretrained":
        return ClipImageEmbedder.pretrained(model_name, pretrained, cache_dir, device)
    if mode == "tiny-random":
        return ClipImageEmbedder.tiny_random(seed, device)
    raise ValueError(f"unknown CLIP embedder mode '{mode}'; valid: pretrained, tiny-random")
