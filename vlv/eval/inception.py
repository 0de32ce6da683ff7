"""InceptionV3 pool3 (2048-d) features exactly as pytorch-fid computes them, with weights from a local file.

FID numbers are only comparable with published ones when the network, its weights and the preprocessing are
the reference ones. We therefore take the architecture from the `pytorch-fid` package itself (its
`FIDInceptionA/C/E_1/E_2` blocks carry the TF-compatible quirks: average pools that ignore padding, and a max
pool in the last block) and assemble the blocks exactly as `pytorch_fid.inception.InceptionV3` does, so the
state dict keys match it too. What we change: the weights file `pt_inception-2015-12-05-6726825d.pth` is read
from a local path (or the torch hub cache where pytorch-fid keeps it), never downloaded, and its checksum is
verified, because a wrong file silently gives wrong FIDs.

Preprocessing is pytorch-fid's: PIL `convert("RGB")`, `ToTensor` ([0, 1] floats), bilinear resize to 299x299
(`F.interpolate`, `align_corners=False`, no antialiasing), then `2x - 1`. Images are resized one by one (the
operation is per image, so this equals pytorch-fid's batched resize) and may therefore differ in size.

The `tiny` preset uses seeded random weights of the same architecture, and `paper_mini` loads a weights file of the
same layout holding seeded random weights, checked against that file's own sha256 (`InceptionSpec.weights_sha256`):
the code paths are the real ones, the numbers are not comparable with anything (`comparable` is False).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vlv.engine.storage import local_weights, read_bytes
from vlv.logs import warn_once

log = logging.getLogger("vlv.eval.inception")

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub's convention: the file name ends with its hash prefix
INCEPTION_INPUT_SIZE = 299
FEATURE_DIM = 2048
_PROGRESS_EVERY_S = 30.0

ImageInput = str | os.PathLike | np.ndarray | Image.Image


@dataclass(frozen=True)
class InceptionSpec:
    """How to build the FID Inception in any process. Picklable: each Ray worker rebuilds the model from it.

    weights: the weights file, or a folder holding it; "" looks in the torch hub cache
      (`<torch.hub.get_dir()>/checkpoints/`, where pytorch-fid saves it).
    random_init_seed: set (tiny preset) to use seeded random weights instead; `weights` is then ignored.
    config_field: the config setting that holds `weights`, named in errors so the user knows what to fix.
    """

    weights: str = ""
    random_init_seed: int | None = None
    config_field: str = "inception_weights"
    device: str = "cpu"
    batch_size: int = 50
    # What the weights file's sha256 must start with: the official file's prefix, or (paper_mini) the whole hash
    # of another file of the same layout, so the check stays on for it too.
    weights_sha256: str = FID_WEIGHTS_SHA256_PREFIX

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"InceptionSpec.batch_size must be > 0, got {self.batch_size}")

    @property
    def comparable(self) -> bool:
        """True when features come from the reference weights, i.e. FIDs compare with published numbers."""
        return self.random_init_seed is None and self.weights_sha256 == FID_WEIGHTS_SHA256_PREFIX

    @property
    def identity(self) -> str:
        """Which network computes the features (part of cache keys: other weights, other statistics)."""
        if self.random_init_seed is not None:
            return f"random-init-seed-{self.random_init_seed}"
        return "pt_inception-2015-12-05" if self.comparable else f"inception-sha256-{self.weights_sha256}"


def resolve_inception_weights(weights: str, *, config_field: str) -> Path:
    """The local weights file for `weights` (file, folder or "" for the torch hub cache); ValueError if absent.

    Cheap: steps call it from `preflight` so a missing file fails before any work.
    """
    if weights:
        candidate = Path(local_weights(weights)).expanduser()  # a store URI is fetched to this node once
        if candidate.is_dir():
            candidate = candidate / FID_WEIGHTS_FILE
        where = f"{weights!r}"
    else:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE
        where = f"the torch hub cache ({candidate.parent}; {config_field} is empty)"
    if not candidate.is_file():
        raise ValueError(
            f"FID Inception weights {FID_WEIGHTS_FILE} not found at {where}. Set {config_field} to the local path "
            f"of that file (or of a folder holding it). Get it once, on a machine with internet, from "
            f"{FID_WEIGHTS_URL} (pytorch-fid's release; weights are never downloaded by the pipeline)."
        )
    return candidate


def load_fid_state_dict(path: Path, expected_sha256: str = FID_WEIGHTS_SHA256_PREFIX) -> dict[str, torch.Tensor]:
    """Read and checksum the weights file (a truncated or different file would give silently wrong FIDs).

    `expected_sha256` is what the file's sha256 must start with: the official file's prefix by default.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(expected_sha256):
        found = digest.hexdigest()[:max(8, len(expected_sha256))]
        if expected_sha256 == FID_WEIGHTS_SHA256_PREFIX:
            what = "the pytorch-fid Inception weights"
            fix = f"Download {FID_WEIGHTS_FILE} again from {FID_WEIGHTS_URL}."
        else:
            what = "the expected Inception weights file"
            fix = "Point the weights setting at the file with that hash."
        raise ValueError(f"{path} is not {what}: its sha256 starts with {found}, expected {expected_sha256}. {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"cannot read the Inception weights {path}: {exc}") from exc


def _patched_torchvision_inception() -> nn.Module:
    """torchvision's InceptionV3 with pytorch-fid's FID blocks swapped in (pytorch-fid's `fid_inception_v3`
    without its download), so the published state dict loads with `strict=True`."""
    from pytorch_fid.inception import (
        FIDInceptionA,
        FIDInceptionC,
        FIDInceptionE_1,
        FIDInceptionE_2,
        _inception_v3,
    )

    inception = _inception_v3(num_classes=1008, aux_logits=False, weights=None)
    inception.Mixed_5b = FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = FIDInceptionE_1(1280)
    inception.Mixed_7c = FIDInceptionE_2(2048)
    return inception


class FidInceptionV3(nn.Module):
    """pytorch-fid's `InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True)`, same block
    layout and state dict keys, built around an already loaded inception; `forward` returns (B, 2048)."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList([
            nn.Sequential(inception.Conv2d_1a_3x3, inception.Conv2d_2a_3x3, inception.Conv2d_2b_3x3,
                          nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(inception.Conv2d_3b_1x1, inception.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)),
            nn.Sequential(inception.Mixed_5b, inception.Mixed_5c, inception.Mixed_5d, inception.Mixed_6a,
                          inception.Mixed_6b, inception.Mixed_6c, inception.Mixed_6d, inception.Mixed_6e),
            nn.Sequential(inception.Mixed_7a, inception.Mixed_7b, inception.Mixed_7c,
                          nn.AdaptiveAvgPool2d(output_size=(1, 1))),
        ])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`images`: (B, 3, H, W) floats in [0, 1]."""
        x = F.interpolate(images, size=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE), mode="bilinear",
                          align_corners=False)
        x = 2 * x - 1
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)


def build_fid_inception(spec: InceptionSpec) -> FidInceptionV3:
    """The FID Inception in eval mode on `spec.device`: reference weights, or seeded random ones (tiny)."""
    with torch.random.fork_rng(devices=[]):  # construction draws default inits: leave the caller's RNG alone
        inception = _patched_torchvision_inception()
    if spec.random_init_seed is None:
        path = resolve_inception_weights(spec.weights, config_field=spec.config_field)
        inception.load_state_dict(load_fid_state_dict(path, spec.weights_sha256), strict=True)
    else:
        _seeded_random_init_(inception, spec.random_init_seed)
    model = FidInceptionV3(inception).eval().to(spec.device)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def seeded_random_fid_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """A state dict of the weights file's layout with seeded random weights (the paper_mini preset's file)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # construction draws the default inits of the layers the He init leaves alone
        inception = _patched_torchvision_inception()
    _seeded_random_init_(inception, seed)
    return {name: tensor.clone() for name, tensor in inception.state_dict().items()}


def _seeded_random_init_(inception: nn.Module, seed: int) -> None:
    """He-normal convolutions from a private generator: the same seed gives the same network anywhere, and
    activations keep a sane scale through the 90-odd layers (PyTorch's default init shrinks them to ~0)."""
    generator = torch.Generator().manual_seed(seed)
    for module in inception.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu", generator=generator)


def image_to_tensor(image: ImageInput) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1] as pytorch-fid reads an image: PIL `convert("RGB")` then `ToTensor`."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(io.BytesIO(read_bytes(image))) as opened:  # a local file or a store URI
                pil = opened.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read image {os.fspath(image)}: {exc}") from exc
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"image arrays must be uint8 (H, W), (H, W, 3) or (H, W, 4); got dtype {image.dtype}, "
                             f"shape {image.shape}")
        pil = Image.fromarray(image).convert("RGB")
    elif isinstance(image, Image.Image):
        pil = image.convert("RGB")
    else:
        raise ValueError(f"unsupported image input of type {type(image).__name__}: pass a path, a uint8 array "
                         "or a PIL image")
    array = np.asarray(pil, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)


def resize_for_inception(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (3, 299, 299) with the exact interpolation FidInceptionV3.forward (and pytorch-fid) uses."""
    return F.interpolate(image.unsqueeze(0), size=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE), mode="bilinear",
                         align_corners=False).squeeze(0)


class InceptionFeatureExtractor:
    """Loads the FID Inception once; `features(images)` returns (N, 2048) float32 pool3 features in order."""

    def __init__(self, spec: InceptionSpec):
        self.spec = spec
        self.model = build_fid_inception(spec)
        if not spec.comparable:
            warn_once(log, "FID Inception is not the reference network (%s): FIDs are not comparable with "
                           "published numbers", spec.identity)

    @property
    def comparable(self) -> bool:
        return self.spec.comparable

    @torch.inference_mode()
    def features(self, images: Sequence[ImageInput]) -> np.ndarray:
        out = np.empty((len(images), FEATURE_DIM), dtype=np.float32)
        started = last_log = time.monotonic()
        for start in range(0, len(images), self.spec.batch_size):
            chunk = images[start:start + self.spec.batch_size]
            batch = torch.stack([resize_for_inception(image_to_tensor(image)) for image in chunk])
            out[start:start + len(chunk)] = self.model(batch.to(self.spec.device)).cpu().numpy()
            now = time.monotonic()
            if now - last_log >= _PROGRESS_EVERY_S:
                done = start + len(chunk)
                log.info("inception features: %d/%d images, %.1f images/s", done, len(images),
                         done / (now - started))
                last_log = now
        return out
