"""Miniature image-side models of the paper preset, each saved in the exact format the paper preset loads.

- Florence-2: a transformers-native `Florence2ForConditionalGeneration` folder (config.json + model.safetensors)
  of the `florence2_large_mini` architecture, with the Florence2Processor files: the CLIP image processor config
  of Florence-2-large (768 px, bicubic, ImageNet mean/std, 577 image tokens) and the offline BART tokenizer.
- open_clip ViT-L/14: the ViT-L-14 model config at miniature width and depth (same module tree, so the same
  state-dict keys up to the block count; output embedding 768 wide, QuickGELU as in OpenAI's weights), in open_clip's
  `local-dir:` format (open_clip_config.json + open_clip_model.safetensors).
- The LAION aesthetic predictor v2: a plain state dict (`layers.N.*`) of its 768-1024-128-64-16-1 MLP.
- The pytorch-fid Inception: the full FID InceptionV3 state dict (its architecture has no smaller form), seeded
  He-normal weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vlv.eval.inception import seeded_random_fid_state_dict
from vlv.models.aesthetic import predict_scores, random_predictor
from vlv.models.arch_configs import florence_config
from vlv.models.clip_embedder import build_clip_embedder
from vlv.models.image_inputs import FLORENCE_IMAGE_MEAN, FLORENCE_IMAGE_STD
from vlv.models.loading import seeded_init

FLORENCE_ARCH = "florence2_large_mini"
FLORENCE_BPE_SIZE = 512  # byte-level BPE ids (with <s> <pad> </s> <unk>); <mask>, Florence tokens, <image> follow
FLORENCE_IMAGE_SIZE = 768  # Florence-2-large's processor size
FLORENCE_IMAGE_TOKENS = 577  # 24 x 24 DaViT tokens + 1 pooled token at 768 px

# open_clip's ViT-L-14 config with only sizes changed (width, depth, heads); embed_dim stays 768.
OPEN_CLIP_VIT_L14_MINI = {
    "embed_dim": 768,
    "quick_gelu": True,  # OpenAI's ViT-L/14 weights use QuickGELU
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
OPEN_CLIP_PREPROCESS = {"size": 224, "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
                        "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                        "resize_mode": "shortest", "fill_color": 0}
# The random predictor's affine output is rescaled so the miniature photos' scores have this mean and spread:
# wide enough that any usual LAION cut-off (4.5 .. 6.5) keeps some photos and drops others.
AESTHETIC_SCORE_MEAN = 5.5
AESTHETIC_SCORE_STD = 1.2


def write_florence(out_dir: Path, tokenizer_dir: Path, image_token_id: int, seed: int) -> None:
    """Model + processor files; the tokenizer files (already written to `tokenizer_dir`) are copied in."""
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    config = florence_config(FLORENCE_ARCH)
    if config.image_token_id != image_token_id:
        raise RuntimeError(f"{FLORENCE_ARCH}.json says image_token_id {config.image_token_id} but the offline "
                           f"tokenizer puts <image> at {image_token_id}")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if len(tokenizer) > config.text_config.vocab_size:
        raise RuntimeError(f"the Florence tokenizer has {len(tokenizer)} ids, more than the model's "
                           f"{config.text_config.vocab_size} embeddings")
    with seeded_init(seed):
        model = Florence2ForConditionalGeneration(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"height": FLORENCE_IMAGE_SIZE, "width": FLORENCE_IMAGE_SIZE}, resample=3,
        do_center_crop=False, crop_size={"height": FLORENCE_IMAGE_SIZE, "width": FLORENCE_IMAGE_SIZE},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=list(FLORENCE_IMAGE_MEAN),
        image_std=list(FLORENCE_IMAGE_STD), do_convert_rgb=True)
    image_processor.image_seq_length = FLORENCE_IMAGE_TOKENS
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(str(out_dir))
    for name in ("vocab.json", "merges.txt"):  # the BART files save_pretrained does not rewrite
        (out_dir / name).write_bytes((tokenizer_dir / name).read_bytes())


def write_open_clip(out_dir: Path, seed: int) -> None:
    import open_clip
    from safetensors.torch import save_file

    with seeded_init(seed):
        model = open_clip.create_model("ViT-L-14", pretrained=None, **OPEN_CLIP_VIT_L14_MINI)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": OPEN_CLIP_VIT_L14_MINI, "preprocess_cfg": OPEN_CLIP_PREPROCESS}, indent=2) + "\n")
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))


def write_aesthetic_predictor(path: Path, clip_dir: Path, photos: Sequence[np.ndarray], seed: int) -> np.ndarray:
    """Seeded v2 MLP, its last layer rescaled so `photos` (uint8 HxWx3) score AESTHETIC_SCORE_MEAN +- STD through
    the miniature CLIP; returns those scores. The scores stay an affine function of the CLIP embedding."""
    embedder = build_clip_embedder("pretrained", model_name=f"local-dir:{clip_dir}", pretrained="")
    embeddings = embedder.embed(list(photos))
    predictor = random_predictor("v2-mlp", seed)
    raw = predict_scores(predictor, embeddings)
    if raw.std() == 0:
        raise RuntimeError("the miniature CLIP gives every photo the same embedding; cannot calibrate the predictor")
    scale = AESTHETIC_SCORE_STD / float(raw.std())
    last = predictor.layers[-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        last.bias.copy_((last.bias - float(raw.mean())) * scale + AESTHETIC_SCORE_MEAN)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({name: tensor.clone() for name, tensor in predictor.state_dict().items()}, path)
    return predict_scores(predictor, embeddings)


def write_inception(path: Path, seed: int) -> None:
    """The state dict `pytorch_fid.inception.fid_inception_v3` loads, with seeded He-normal convolutions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(seeded_random_fid_state_dict(seed), path)
