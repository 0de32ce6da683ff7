"""Both VLV stages on the paper_mini checkpoints in bf16 as DeepSpeed casts them (parameters only: buffers stay
float32), gradient checkpointing on."""

from __future__ import annotations

import pytest
import torch

from vlv.config import load_config
from vlv.testing.builders import uint8_images


@pytest.fixture(scope="module")
def config(paper_mini_assets):
    return load_config("paper_mini")


def _as_deepspeed_bf16(model: torch.nn.Module) -> torch.nn.Module:
    """What DeepSpeed's bf16 mode does to the module: every parameter cast, buffers (rotary, cosine tables) kept."""
    for param in model.parameters():
        param.data = param.data.to(torch.bfloat16)
    return model


def _grads(model: torch.nn.Module) -> tuple[list[torch.Tensor], list[str]]:
    trainable = [p.grad for p in model.parameters() if p.requires_grad]
    frozen_with_grad = [name for name, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    return trainable, frozen_with_grad


def test_stage1_forward_backward_in_bf16_with_unet_checkpointing(config):
    from vlv.models.vlv_stage1 import Stage1Batch, build_stage1_model

    model_cfg = config.train_stage1.model
    model = _as_deepspeed_bf16(build_stage1_model(model_cfg)).train()
    assert model.diffusion.unet.is_gradient_checkpointing
    images = uint8_images(1, model_cfg.image_size)
    loss = model(Stage1Batch(images=images), generator=torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # the MSE is taken in float32
    loss.backward()
    trainable, frozen_with_grad = _grads(model)
    assert frozen_with_grad == []
    assert all(g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in trainable)
    assert model.embedder.encoder.queries.grad.abs().sum() > 0  # the signal reaches the queries through the UNet


@pytest.fixture(scope="module")
def bf16_captioner(config):
    from vlv.models.captioner import build_caption_tokenizer, build_captioner
    from vlv.models.vlv_stage1 import build_caption_embedder

    model_cfg = config.train_stage2.model
    captioner = build_captioner(model_cfg, build_caption_embedder(config.train_stage1.model),
                                build_caption_tokenizer(model_cfg))
    return _as_deepspeed_bf16(captioner)


def test_stage2_forward_backward_in_bf16_with_llm_checkpointing(bf16_captioner, config):
    captioner = bf16_captioner.train()
    assert captioner.llm.is_gradient_checkpointing and captioner.trainable_set == "mlp+llm+encoder"
    batch = captioner.make_batch(uint8_images(1, config.train_stage1.model.image_size, seed=1),
                                 ["A red motorcycle parked in a garage. Boxes line the shelves."])
    loss = captioner(batch)
    assert torch.isfinite(loss)
    loss.backward()
    trainable, frozen_with_grad = _grads(captioner)
    assert frozen_with_grad == []
    assert all(g is not None and torch.isfinite(g).all() for g in trainable)
    assert captioner.mlp[0].weight.grad.abs().sum() > 0 and captioner.llm.get_input_embeddings().weight.grad is not None
    captioner.zero_grad(set_to_none=True)


def test_bf16_beam_search_generation(bf16_captioner, config):
    captions = bf16_captioner.generate(uint8_images(2, config.train_stage1.model.image_size, seed=2), num_beams=4,
                                       max_new_tokens=6)
    assert len(captions) == 2 and all(isinstance(text, str) for text in captions)
