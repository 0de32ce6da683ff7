"""LAION aesthetic predictors: small heads on L2-normalised CLIP ViT-L/14 image embeddings (docs/DESIGN.md section 3).

The module structures copy the published code exactly, so the published weight files load with
`strict=True` and no key renaming:
- v2 ("improved aesthetic predictor", christophschuhmann/improved-aesthetic-predictor): an MLP
  768-1024-128-64-16-1 whose `nn.Sequential` is called `layers`, with dropouts and *no* activations (the ReLUs
  are commented out in the original, so the net is an affine map in eval mode). File
  `sac+logos+ava1-l14-linearMSE.pth`, keys `layers.{0,2,4,6,7}.{weight,bias}`.
- v1 (LAION-AI/aesthetic-predictor): a single `nn.Linear(768, 1)`, file `sa_0_4_vit_l_14_linear.pth`, keys
  `weight` and `bias`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from vlv.engine.storage import local_weights

PredictorKind = Literal["v2-mlp", "v1-linear"]
PREDICTOR_KINDS: tuple[str, ...] = ("v2-mlp", "v1-linear")
CLIP_L14_EMBED_DIM = 768


@dataclass(frozen=True)
class PublishedWeights:
    """Where the published weights of one predictor come from (named in every missing-file error)."""

    file_name: str
    url: str


PUBLISHED_WEIGHTS: dict[str, PublishedWeights] = {
    "v2-mlp": PublishedWeights(
        "sac+logos+ava1-l14-linearMSE.pth",
        "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
        "sac%2Blogos%2Bava1-l14-linearMSE.pth",
    ),
    "v1-linear": PublishedWeights(
        "sa_0_4_vit_l_14_linear.pth",
        "https://github.com/LAION-AI/aesthetic-predictor/raw/main/sa_0_4_vit_l_14_linear.pth",
    ),
}


class AestheticMLPv2(nn.Module):
    """The improved aesthetic predictor v2; `forward` returns (N, 1) like the original."""

    def __init__(self, input_dim: int = CLIP_L14_EMBED_DIM):
        super().__init__()
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


class AestheticLinearV1(nn.Linear):
    """The v1 predictor. A subclass of `nn.Linear` (not a wrapper) so its keys stay `weight` and `bias`."""

    def __init__(self, input_dim: int = CLIP_L14_EMBED_DIM):
        super().__init__(input_dim, 1)
        self.input_dim = input_dim


def _check_kind(kind: str) -> None:
    if kind not in PREDICTOR_KINDS:
        raise ValueError(f"unknown aesthetic predictor '{kind}'; valid: {', '.join(PREDICTOR_KINDS)}")


def build_predictor(kind: PredictorKind, input_dim: int = CLIP_L14_EMBED_DIM) -> nn.Module:
    """An untrained predictor of the published structure (PyTorch's default init)."""
    _check_kind(kind)
    return AestheticMLPv2(input_dim) if kind == "v2-mlp" else AestheticLinearV1(input_dim)


def random_predictor(kind: PredictorKind, seed: int, input_dim: int = CLIP_L14_EMBED_DIM) -> nn.Module:
    """Seeded random weights for the `tiny` preset; forks the RNG so the caller's random state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_predictor(kind, input_dim)
    return model.eval()


def load_predictor(kind: PredictorKind, path: str | Path, input_dim: int = CLIP_L14_EMBED_DIM) -> nn.Module:
    """The published weights file loaded strictly into the published structure, in eval mode.

    Every failure (no file, not a state dict, wrong keys or shapes) is a ValueError that names the file and
    where the right one is published, because the usual cause is a wrong path or the other predictor's file.
    """
    _check_kind(kind)
    published = PUBLISHED_WEIGHTS[kind]
    where = f"the published file is {published.file_name} from {published.url}"
    if not str(path):
        raise ValueError(f"no weights file given for the {kind} aesthetic predictor; {where}")
    path = Path(local_weights(str(path)))  # a store URI is fetched to this node once
    if not path.is_file():
        raise ValueError(f"aesthetic predictor weights {path} do not exist; {where}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same actionable message
        raise ValueError(f"cannot read {path} as a PyTorch state dict ({type(exc).__name__}: {exc}); "
                         f"{where}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a plain state dict of tensors (got {type(state).__name__}); {where}")
    model = build_predictor(kind, input_dim)
    problems = _state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise ValueError(f"{path} does not match the {kind} predictor ({'; '.join(problems)}); {where}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def _state_dict_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> list[str]:
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    for name in sorted(set(expected) & set(found)):
        if tuple(expected[name].shape) != tuple(found[name].shape):
            problems.append(f"{name} has shape {tuple(found[name].shape)}, "
                            f"expected {tuple(expected[name].shape)}")
    return problems


@torch.no_grad()
def predict_scores(model: nn.Module, embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
    """Scores (N,) float32 for L2-normalised embeddings (N, D); the caller normalises, as in the original."""
    assert not model.training, "call .eval() first: dropout would make scores random"
    tensor = torch.as_tensor(embeddings, dtype=torch.float32)
    device = next(model.parameters()).device
    return model(tensor.to(device)).reshape(-1).float().cpu().numpy()
