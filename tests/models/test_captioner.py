"""Stage-2 captioner on the tiny preset: trainable sets, loss/labels wiring, generation."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vlv.models.caption_tokenizer import IGNORE_INDEX
from vlv.models.captioner import build_caption_tokenizer, build_captioner
from vlv.models.config import CaptionerConfig, Stage1ModelConfig
from vlv.models.vlv_stage1 import build_caption_embedder
from vlv.testing.builders import CAPTIONS, uint8_images


def _build(trainable: str = "mlp+llm+encoder"):
    cfg = dataclasses.replace(CaptionerConfig.tiny(), trainable=trainable)
    tokenizer = build_caption_tokenizer(cfg, CAPTIONS)
    return build_captioner(cfg, build_caption_embedder(Stage1ModelConfig.tiny()), tokenizer)


@pytest.fixture(scope="module")
def captioner():
    return _build()


def _names(model, params) -> set[str]:
    wanted = {id(p) for p in params}
    return {name for name, p in model.named_parameters() if id(p) in wanted}


@pytest.mark.parametrize("trainable", ["mlp", "mlp+llm", "mlp+llm+encoder"])
def test_train_mode_follows_the_trainable_set(trainable):
    """Which parameters train is checked against the official code in test_trainable_sets.py; here, the modes."""
    model = _build(trainable)
    model.train()
    assert model.mlp.training and model.llm.training == ("llm" in trainable)
    assert model.embedder.encoder.florence.language_model.training == ("encoder" in trainable)
    assert not model.embedder.clip_text.training


def test_loss_is_finite_and_grads_reach_only_the_trainable_set():
    model = _build("mlp+llm+encoder")
    batch = model.make_batch(uint8_images(2, 64), CAPTIONS[:2])
    loss = model(batch)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    trainable = _names(model, model.trainable_parameters())
    assert {name for name, p in model.named_parameters() if p.grad is not None} == trainable


def test_frozen_encoder_gets_no_graph_in_mlp_mode():
    model = _build("mlp")
    loss = model(model.make_batch(uint8_images(2, 64), CAPTIONS[:2]))
    loss.backward()
    assert {name for name, p in model.named_parameters() if p.grad is not None} == \
        {name for name, _ in model.named_parameters() if name.startswith("mlp.")}


def test_loss_equals_cross_entropy_over_caption_tokens_and_eos(captioner):
    """Recompute the loss from logits: prefix and padding never count, the EOS does."""
    captioner.eval()
    try:
        batch = captioner.make_batch(uint8_images(2, 64), ["A red car.", CAPTIONS[2]])
        with torch.no_grad():
            loss = captioner(batch)
            prefix = captioner.prefix_embeddings(batch.images)
            embeds = torch.cat([prefix, captioner.llm.get_input_embeddings()(batch.input_ids)], 1)
            mask = torch.cat([torch.ones(2, 77, dtype=torch.long), batch.attention_mask], 1)
            logits = captioner.llm(inputs_embeds=embeds, attention_mask=mask).logits
    finally:
        captioner.train()
    total, count = 0.0, 0
    for row in range(2):
        length = int(batch.attention_mask[row].sum())
        targets = batch.input_ids[row, :length]  # caption tokens, EOS last
        predicted = logits[row, 76:76 + length]  # position 76 (last prefix) predicts the first caption token
        total += torch.nn.functional.cross_entropy(predicted, targets, reduction="sum").item()
        count += length
        assert targets[-1].item() == captioner.tokenizer.eos_token_id
    assert loss.item() == pytest.approx(total / count, rel=1e-4)
    assert IGNORE_INDEX not in batch.input_ids.tolist()


def test_generate_returns_cleaned_strings(captioner):
    images = uint8_images(3, 64)
    captions = captioner.generate(images, num_beams=4, max_new_tokens=12)
    raw = captioner.generate(images, num_beams=4, max_new_tokens=12, postprocess=False)
    assert isinstance(captions, list) and len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert all(len(r) > 0 for r in raw)
    assert captioner.training  # generate does not leave the model in eval mode


def test_mismatched_images_and_captions_are_refused(captioner):
    with pytest.raises(ValueError, match="captions"):
        captioner.make_batch(uint8_images(2, 64), CAPTIONS[:3])


def test_paper_without_llm_weights_names_the_field():
    cfg = CaptionerConfig.paper()
    with pytest.raises(ValueError, match="llm_weights"):
        build_caption_tokenizer(cfg)


def test_random_init_needs_captions_for_its_tokenizer():
    with pytest.raises(ValueError, match="captions"):
        build_caption_tokenizer(CaptionerConfig.tiny())


@pytest.mark.parametrize("field, value", [("trainable", "llm"), ("llm_arch", "qwen3"), ("max_caption_tokens", 0),
                                          ("tokenizer_vocab_size", 100)])
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        CaptionerConfig(**{field: value})
