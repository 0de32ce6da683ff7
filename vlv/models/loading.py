"""Shared plumbing for building models: seeded random init, weight-path checks, freezing, fingerprints."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterable, Iterator, Literal

import torch
from torch import nn

from vlv.engine.storage import local_weights

InitMode = Literal["pretrained", "random"]
INIT_MODES = ("pretrained", "random")


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Random init from `seed` without touching the caller's global RNG state (the training loop owns that)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def require_weights(value: str | None, field: str, what: str) -> str:
    """`paper` models load real weights; a missing path must say which field to set and with what.

    Returns what a loader opens: a local path or hub id unchanged, a store URI (s3://, gs://) fetched once to
    this node (`vlv.engine.storage.local_weights`).
    """
    if not value:
        raise ValueError(f"{field} is not set: put {what} there (a local directory, or a hub id when online), "
                         f"or set init='random' for randomly initialised weights")
    return local_weights(value)


def freeze(module: nn.Module) -> None:
    """Frozen = no grads and eval mode (no dropout / drop-path), as the recipe's frozen parts are teachers."""
    for param in module.parameters():
        param.requires_grad_(False)
    module.eval()


def unique_parameters(modules: Iterable[nn.Module | nn.Parameter]) -> list[nn.Parameter]:
    """Parameters of several modules, each once (tied weights appear in two modules)."""
    seen: set[int] = set()
    params: list[nn.Parameter] = []
    for item in modules:
        for param in ([item] if isinstance(item, nn.Parameter) else item.parameters()):
            if id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return params


def tensor_fingerprint(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names, shapes, dtypes and raw bytes, in name order: equal iff bit-identical."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tuple(tensor.shape)}|{data.dtype}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def count_parameters(module: nn.Module) -> int:
    return sum(param.numel() for param in unique_parameters([module]))
