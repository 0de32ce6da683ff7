"""Stage 1 on the tiny preset: loss, exact trainable/frozen split, frozen weights bit-identical after a step."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from vlv.models.config import Stage1ModelConfig
from vlv.models.image_inputs import florence_pixels
from vlv.models.vlv_stage1 import Stage1Batch, build_caption_embedder, build_stage1_model
from vlv.testing.builders import uint8_images

TRAINABLE_PREFIXES = ("embedder.encoder.florence.language_model.", "embedder.encoder.queries",
                      "embedder.encoder.projection.")


def _trainable_names(model) -> set[str]:
    wanted = {id(p) for p in model.trainable_parameters()}
    return {name for name, p in model.named_parameters() if id(p) in wanted}


def test_trainable_set_is_exactly_the_spec_one(tiny_stage1):
    names = {name for name, _ in tiny_stage1.named_parameters()}
    expected = {name for name in names if name.startswith(TRAINABLE_PREFIXES)}
    assert _trainable_names(tiny_stage1) == expected
    assert {name for name, p in tiny_stage1.named_parameters() if p.requires_grad} == expected
    frozen_roots = ("embedder.encoder.florence.vision_tower.", "embedder.encoder.florence.multi_modal_projector.",
                    "embedder.clip_text.", "diffusion.unet.", "diffusion.vae.")
    assert all(name.startswith(frozen_roots) for name in names - expected)
    for root in frozen_roots:  # each frozen part exists and has parameters
        assert any(name.startswith(root) for name in names - expected), root


@pytest.mark.parametrize("vision_train_mode", [True, False])
def test_train_mode_of_the_frozen_parts(vision_train_mode):
    """The frozen vision tower follows frozen_vision_train_mode; every other frozen part stays in eval mode."""
    cfg = dataclasses.replace(Stage1ModelConfig.tiny(), frozen_vision_train_mode=vision_train_mode)
    model = build_stage1_model(cfg)
    model.train()
    florence = model.embedder.encoder.florence
    assert florence.language_model.training and model.embedder.encoder.projection.training
    for vision in (florence.vision_tower, florence.multi_modal_projector):
        assert all(module.training == vision_train_mode for module in vision.modules())
    for frozen in (model.embedder.clip_text, model.diffusion.unet, model.diffusion.vae):
        assert not any(module.training for module in frozen.modules())
    model.eval()
    assert not any(module.training for module in model.modules())


def _visual_tokens(model, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # drop path draws from the global RNG, which the training loop seeds per micro-batch
    pixels = florence_pixels(uint8_images(2, 64), 64)
    return model.embedder.encoder.visual_tokens(pixels)


def test_frozen_vision_train_mode_makes_drop_path_active_and_keeps_weights_bit_identical():
    model = build_stage1_model(Stage1ModelConfig.tiny())
    assert model.embedder.encoder.frozen_vision_train_mode  # what the official code did (the paper default)
    model.train()
    first, again, other = _visual_tokens(model, 1), _visual_tokens(model, 1), _visual_tokens(model, 2)
    assert torch.equal(first, again) and not torch.allclose(first, other)
    model.eval()
    assert torch.equal(_visual_tokens(model, 1), _visual_tokens(model, 2))

    model.train()
    fingerprint = model.frozen_state_fingerprint()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
    torch.manual_seed(3)
    loss = model(Stage1Batch(uint8_images(2, 64)), generator=torch.Generator().manual_seed(0))
    loss.backward()
    optimizer.step()
    assert model.frozen_state_fingerprint() == fingerprint


def test_without_frozen_vision_train_mode_the_vision_features_are_deterministic():
    model = build_stage1_model(dataclasses.replace(Stage1ModelConfig.tiny(), frozen_vision_train_mode=False))
    model.train()
    assert torch.equal(_visual_tokens(model, 1), _visual_tokens(model, 2))


def test_forward_gives_finite_loss_and_grads_reach_only_the_trainable_set():
    model = build_stage1_model(Stage1ModelConfig.tiny())
    loss = model(Stage1Batch(uint8_images(2, 64)), generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    trainable = _trainable_names(model)
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    nonzero = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert nonzero == trainable  # every trainable tensor is actually used by the loss
    assert all(torch.isfinite(p.grad).all() for p in model.trainable_parameters())


def test_optimizer_step_changes_trainable_and_keeps_frozen_bit_identical():
    model = build_stage1_model(Stage1ModelConfig.tiny())
    fingerprint = model.frozen_state_fingerprint()
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01)
    for step in range(2):
        loss = model(Stage1Batch(uint8_images(2, 64, seed=step)), generator=torch.Generator().manual_seed(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.named_parameters())
    changed = {name for name, old in before.items() if not torch.equal(old, after[name])}
    assert changed == set(before)
    assert model.frozen_state_fingerprint() == fingerprint


def test_fingerprint_detects_a_changed_frozen_weight():
    model = build_stage1_model(Stage1ModelConfig.tiny())
    fingerprint = model.frozen_state_fingerprint()
    with torch.no_grad():
        weight = model.diffusion.unet.conv_in.weight
        weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(float("inf")))
    assert model.frozen_state_fingerprint() != fingerprint


def test_loss_is_deterministic_given_generator_in_eval_mode(tiny_stage1):
    images = uint8_images(2, 64)
    tiny_stage1.eval()
    try:
        first = tiny_stage1(Stage1Batch(images), generator=torch.Generator().manual_seed(7))
        again = tiny_stage1(Stage1Batch(images), generator=torch.Generator().manual_seed(7))
        other = tiny_stage1(Stage1Batch(images), generator=torch.Generator().manual_seed(8))
    finally:
        tiny_stage1.train()
    assert first.item() == again.item()
    assert first.item() != other.item()


def test_caption_embeddings_shape_and_conditioning(tiny_stage1):
    images = uint8_images(3, 64)
    tiny_stage1.eval()  # no dropout, so two passes agree
    try:
        with torch.no_grad():
            z = tiny_stage1.embedder.caption_embeddings(images)
            cond = tiny_stage1.embedder(images)
    finally:
        tiny_stage1.train()
    assert z.shape == (3, 77, 64) and cond.shape == (3, 77, 64)
    assert torch.allclose(cond, tiny_stage1.embedder.clip_text(z), atol=1e-6)


def test_generate_images_is_uint8_deterministic_and_keeps_train_mode(tiny_stage1):
    tiny_stage1.train()
    images = uint8_images(2, 64)
    out = tiny_stage1.generate_images(images, num_steps=3, guidance_scale=2.0,
                                      generator=torch.Generator().manual_seed(0))
    again = tiny_stage1.generate_images(images, num_steps=3, guidance_scale=2.0,
                                        generator=torch.Generator().manual_seed(0))
    unguided = tiny_stage1.generate_images(images, num_steps=3, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == (2, 64, 64, 3)
    assert torch.equal(out, again)
    assert not torch.equal(out, unguided)
    assert tiny_stage1.training and tiny_stage1.embedder.encoder.florence.language_model.training


def test_trainable_state_round_trips_into_a_fresh_embedder(tiny_stage1):
    state = tiny_stage1.embedder.trainable_state_dict()
    fresh = build_caption_embedder(Stage1ModelConfig.tiny(seed=5))
    fresh.load_trainable_state_dict(state)
    # The seed-5 frozen parts differ, so compare the loaded tensors, then check a wrong state is refused.
    loaded = fresh.trainable_state_dict()
    assert state.keys() == loaded.keys() and all(torch.equal(state[k], loaded[k]) for k in state)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_trainable_state_dict({k: v for k, v in state.items() if "queries" not in k})
    # A whole-model export (what the training loop writes: trainable tensors by model-level name) loads too.
    export = {name: p.detach() for name, p in tiny_stage1.named_parameters() if p.requires_grad}
    fresh = build_caption_embedder(Stage1ModelConfig.tiny(seed=6))
    fresh.load_trainable_state_dict(export)
    assert torch.equal(fresh.encoder.queries, tiny_stage1.embedder.encoder.queries)


def test_bad_images_are_refused_with_a_clear_error(tiny_stage1):
    with pytest.raises(ValueError, match="uint8"):
        tiny_stage1(Stage1Batch(uint8_images(1, 64).float()))
    with pytest.raises(ValueError, match="64x64"):
        tiny_stage1(Stage1Batch(uint8_images(1, 32)))


def test_paper_without_weights_names_the_field():
    with pytest.raises(ValueError, match="florence_weights"):
        build_stage1_model(Stage1ModelConfig.paper())
    with pytest.raises(ValueError, match="sd_weights"):
        build_stage1_model(Stage1ModelConfig.paper(florence_weights="/somewhere/florence"))


@pytest.mark.parametrize("field, value, message", [
    ("init", "zeros", "init"), ("florence_arch", "florence2_huge", "florence_arch"),
    ("num_queries", 78, "num_queries"), ("image_size", 60, "image_size"),
    ("florence_image_size", 100, "florence_image_size"), ("task_prompt", "<OD>", "task_prompt"),
])
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        Stage1ModelConfig(**{field: value})
