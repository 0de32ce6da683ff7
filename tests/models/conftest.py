"""Fixtures for the model tests: tiny models (seeded random weights) and synthetic uint8 images."""

from __future__ import annotations

import pytest
import torch

CAPTIONS = [
    "A red car is parked on a quiet street. The sky above it is blue.",
    "Two dogs play in a green park. One dog is brown and the other is white.",
    "A bowl of fruit sits on a wooden table. Apples and oranges fill the bowl.",
    "A lighthouse stands on a rocky coast at sunset. Waves break on the rocks.",
] * 8


def uint8_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, size, size, 3), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def tiny_stage1():
    """Shared read-only tiny stage-1 model (tests that train build their own)."""
    from vlv.models.config import Stage1ModelConfig
    from vlv.models.vlv_stage1 import build_stage1_model

    return build_stage1_model(Stage1ModelConfig.tiny())
