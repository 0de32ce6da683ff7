"""A small regression workload with a frozen part: the training infrastructure's reference task.

Tests and benchmarks run the real loop (Ray Train + DeepSpeed ZeRO) on it in seconds, the way torchtitan keeps a
debug model: it exercises everything the VLV stages rely on (a frozen sub-module, a trainable head, a
deterministic endless batch stream that can start at any micro-batch) without any weights to download.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


class ToyModel(nn.Module):
    """Frozen input projection (stands in for a frozen encoder) -> trainable MLP head."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, depth: int, dropout: float):
        super().__init__()
        self.frozen = nn.Linear(in_dim, hidden)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden, out_dim))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.frozen(x)))


@dataclass(frozen=True)
class ToyRegressionTask:
    """y = tanh(x W) for a fixed random W; inputs are a pure function of (seed, rank, micro-batch index)."""

    in_dim: int = 16
    hidden: int = 64
    out_dim: int = 8
    depth: int = 2
    dropout: float = 0.05  # draws from the global RNG, as real models do
    input_noise: float = 0.01  # draws from the loop's per-micro-batch generator, as diffusion noise does
    data_seed: int = 1234

    def build_model(self) -> ToyModel:
        model = ToyModel(self.in_dim, self.hidden, self.out_dim, self.depth, self.dropout)
        model.frozen.requires_grad_(False)
        return model

    def teacher(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.data_seed)
        return torch.randn(self.in_dim, self.out_dim, generator=generator) / self.in_dim**0.5

    def batch_at(self, *, rank: int, index: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.data_seed * 7_919 + rank * 1_000_003 + index + 1)
        x = torch.randn(batch_size, self.in_dim, generator=generator)
        return x, torch.tanh(x @ self.teacher())

    def batches(self, *, rank: int, world_size: int, batch_size: int, start_batch: int
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for index in itertools.count(start_batch):
            yield self.batch_at(rank=rank, index=index, batch_size=batch_size)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator | None = None
             ) -> torch.Tensor:
        x, y = batch
        if generator is not None and self.input_noise > 0:
            x = x + self.input_noise * torch.randn(x.shape, generator=generator)
        reference = next(model.parameters())  # DeepSpeed moved the model to its device and precision
        prediction = model(x.to(device=reference.device, dtype=reference.dtype))
        return nn.functional.mse_loss(prediction.float(), y.to(reference.device))
