"""Architecture configs shipped with the project (`vlv/models/configs/`), so model shapes are checkable offline.

The `paper` files are the published `config.json` files of the checkpoints we start from; the `tiny` files keep
the same classes and block types at toy width; the `*_mini` files are the paper files with only their sizes reduced
(the `paper_mini` preset's checkpoints are built from them). Keys starting with `_` (e.g. `_source`) are provenance
notes and are stripped before a config class sees them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARCH_DIR = Path(__file__).parent / "configs"

FLORENCE_ARCHS = ("florence2_large", "florence2_large_mini", "tiny_florence2")
DIFFUSION_ARCHS = ("sd21_base", "sd21_base_mini", "tiny_sd")
DIFFUSION_PARTS = ("unet", "vae", "text_encoder", "scheduler")
LLM_ARCHS = ("qwen2.5_0.5b", "qwen2.5_1.5b", "qwen2.5_3b", "qwen2.5_3b_mini", "tiny_qwen2")


def read_arch_json(name: str) -> dict[str, Any]:
    """Read `configs/<name>.json` (name may contain one folder, e.g. `sd21_base/unet`), notes stripped."""
    path = ARCH_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(str(p.relative_to(ARCH_DIR).with_suffix("")) for p in ARCH_DIR.rglob("*.json"))
        raise ValueError(f"no architecture config '{name}' under {ARCH_DIR}; known: {', '.join(known)}")
    data = json.loads(path.read_text())
    return {key: value for key, value in data.items() if not key.startswith("_") or key == "_class_name"}


def florence_config(arch: str):
    from transformers import Florence2Config

    _check_choice("florence arch", arch, FLORENCE_ARCHS)
    return Florence2Config(**read_arch_json(arch))


def unet_config(arch: str) -> dict[str, Any]:
    _check_choice("diffusion arch", arch, DIFFUSION_ARCHS)
    return read_arch_json(f"{arch}/unet")


def vae_config(arch: str) -> dict[str, Any]:
    _check_choice("diffusion arch", arch, DIFFUSION_ARCHS)
    return read_arch_json(f"{arch}/vae")


def clip_text_config(arch: str):
    from transformers import CLIPTextConfig

    _check_choice("diffusion arch", arch, DIFFUSION_ARCHS)
    return CLIPTextConfig(**_without_class_name(read_arch_json(f"{arch}/text_encoder")))


def noise_schedule_config(arch: str) -> dict[str, Any]:
    _check_choice("diffusion arch", arch, DIFFUSION_ARCHS)
    return _without_class_name(read_arch_json(f"{arch}/scheduler"))


def llm_config(arch: str, vocab_size: int | None = None):
    from transformers import Qwen2Config

    _check_choice("llm arch", arch, LLM_ARCHS)
    fields = read_arch_json(arch)
    if vocab_size is not None:
        fields["vocab_size"] = vocab_size
    return Qwen2Config(**fields)


def _without_class_name(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if key != "_class_name"}


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} '{value}'; allowed: {', '.join(allowed)}")
