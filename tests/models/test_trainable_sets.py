"""Which parameters train in each stage and unfreezing set, checked name by name against the official code.

The rules are module prefixes in our naming; each comment says where in the official release (models/build.py,
models/VLV_stage1.py, models/VLV_stage2.py, train/train_VLV_stage2.py, train_stage1.sh, train_stage2.sh) the
choice comes from. Official -> our module names:
    Florence `language_model.model` (shared, encoder, decoder)  -> embedder.encoder.florence.language_model
    Florence `vision_tower` (DaViT)                             -> embedder.encoder.florence.vision_tower
    Florence image_projection / image_proj_norm /
             image_pos_embed / visual_temporal_embed            -> embedder.encoder.florence.multi_modal_projector
    `query_embed`, `language_proj`                              -> embedder.encoder.queries, embedder.encoder.projection
    SD `text_encoder`, `unet`, `vae`                            -> embedder.clip_text, diffusion.unet, diffusion.vae
    stage-2 `mlp`, `qwen2_model`                                -> mlp, llm
(Florence's lm_head, frozen in the official code, is not part of our model: only its encoder-decoder is used.)
"""

from __future__ import annotations

import dataclasses

import pytest

from vlv.models.captioner import build_caption_tokenizer, build_captioner
from vlv.models.config import CaptionerConfig, Stage1ModelConfig
from vlv.models.vlv_stage1 import build_caption_embedder
from vlv.testing.builders import CAPTIONS

FLORENCE_LM = "embedder.encoder.florence.language_model."
QUERIES, PROJECTION = "embedder.encoder.queries", "embedder.encoder.projection."
VISION, PROJECTOR = "embedder.encoder.florence.vision_tower.", "embedder.encoder.florence.multi_modal_projector."
CLIP_TEXT = "embedder.clip_text."

# Stage 1. train_stage1.sh passes --unfreeze_florence2_language_model; models/build.py, load_Florence2_model (the
# `elif training_args.unfreeze_florence2_language_model` branch) freezes all of Florence, then unfreezes
# `model.language_model` except its lm_head. models/VLV_stage1.py, SDModel.__init__, makes `language_proj` and
# `query_embed` trainable; models/build.py, load_sd_model, freezes the VAE, text encoder and UNet.
STAGE1_TRAINABLE = (FLORENCE_LM, QUERIES, PROJECTION)
STAGE1_FROZEN = (VISION, PROJECTOR, CLIP_TEXT, "diffusion.unet.", "diffusion.vae.")

# Stage 2. train/train_VLV_stage2.py, train_model (right after initialize_models) sets requires_grad False on
# `language_proj` and `query_embed`; the SD text encoder stays frozen from load_sd_model; models/VLV_stage2.py,
# CLIPDecoder.__init__, loads Qwen with from_pretrained (every weight trainable) and builds a new MLP. Florence
# follows the flags: train_stage2.sh passes --unfreeze_florence2_language_model (= mlp+llm+encoder: Florence's
# language model trains); without it all of Florence is frozen (= mlp+llm). The official script has no switch
# that freezes Qwen, so `mlp` (paper Table 4's first row) is the MLP alone by the paper's description.
STAGE2_TRAINABLE = {
    "mlp": ("mlp.",),
    "mlp+llm": ("mlp.", "llm."),
    "mlp+llm+encoder": ("mlp.", "llm.", FLORENCE_LM),
}
STAGE2_ALWAYS_FROZEN = (QUERIES, PROJECTION, VISION, PROJECTOR, CLIP_TEXT)


def _split(model) -> tuple[set[str], set[str]]:
    names = dict(model.named_parameters())
    return ({n for n, p in names.items() if p.requires_grad}, {n for n, p in names.items() if not p.requires_grad})


def _matching(names: set[str], prefixes: tuple[str, ...]) -> set[str]:
    return {name for name in names if name.startswith(prefixes)}


def test_stage1_trainable_and_frozen_sets_are_the_official_ones(tiny_stage1):
    trainable, frozen = _split(tiny_stage1)
    every = trainable | frozen
    assert trainable == _matching(every, STAGE1_TRAINABLE)
    assert frozen == _matching(every, STAGE1_FROZEN) == every - trainable
    for prefix in STAGE1_TRAINABLE + STAGE1_FROZEN:  # every rule names a part that exists
        assert _matching(every, (prefix,)), prefix
    trainable_ids = {id(p) for p in tiny_stage1.trainable_parameters()}
    assert {n for n, p in tiny_stage1.named_parameters() if id(p) in trainable_ids} == trainable


@pytest.fixture(scope="module")
def embedder():
    return build_caption_embedder(Stage1ModelConfig.tiny())


@pytest.mark.parametrize("trainable_set", sorted(STAGE2_TRAINABLE))
def test_stage2_trainable_and_frozen_sets_are_the_official_ones(embedder, trainable_set):
    cfg = dataclasses.replace(CaptionerConfig.tiny(), trainable=trainable_set)
    model = build_captioner(cfg, embedder, build_caption_tokenizer(cfg, CAPTIONS))
    trainable, frozen = _split(model)
    every = trainable | frozen
    rules = STAGE2_TRAINABLE[trainable_set]
    assert trainable == _matching(every, rules)
    assert frozen == every - _matching(every, rules)
    assert _matching(every, STAGE2_ALWAYS_FROZEN) <= frozen
    for prefix in rules + STAGE2_ALWAYS_FROZEN:
        assert _matching(every, (prefix,)), prefix
    assert {n for n, p in model.named_parameters() if any(p is q for q in model.trainable_parameters())} == trainable
