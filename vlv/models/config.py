"""Typed configs of the two VLV models. Torch-free on purpose: step configs (and so the CLI) import them.

`paper()` is the paper's models (Florence-2-large, SD 2.1 base, Qwen2.5); `tiny()` is the same classes at toy width
with seeded random weights, built from the `tiny_*` architecture files in `vlv/models/configs/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlv.models.arch_configs import DIFFUSION_ARCHS, FLORENCE_ARCHS, LLM_ARCHS

FLORENCE_CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
CAPTIONER_TRAINABLE = ("mlp", "mlp+llm", "mlp+llm+encoder")
_INIT_MODES = ("pretrained", "random")
_CLIP_MAX_POSITIONS = 77


@dataclass
class Stage1ModelConfig:
    # "pretrained": Florence-2 and SD 2.1 weights from the paths below. "random": seeded random init of the
    # `*_arch` files (the tiny preset; also lets you build the paper shapes without weights).
    init: Literal["pretrained", "random"] = "pretrained"
    seed: int = 0
    florence_arch: str = "florence2_large"
    # transformers-native Florence-2 checkpoint: local dir or hub id, e.g. florence-community/Florence-2-large
    florence_weights: str = ""
    sd_arch: str = "sd21_base"
    # diffusers-layout SD 2.1 base folder (unet/, vae/, text_encoder/), e.g. stabilityai/stable-diffusion-2-1-base
    sd_weights: str = ""
    num_queries: int = 77
    query_init_std: float = 1.0  # the official code draws the queries from torch.randn
    image_size: int = 384  # batch images (uint8, square); the VAE sees them at this size (latents: size / 8)
    florence_image_size: int = 768  # Florence2Processor resizes to this (Florence-2-large: 768)
    task_prompt: str = "<MORE_DETAILED_CAPTION>"
    unet_gradient_checkpointing: bool = False
    # The frozen DaViT tower in train mode while training (its drop path, up to 0.1, active; weights still frozen),
    # as the official code runs it (the whole model in train mode). False: eval mode, deterministic features.
    frozen_vision_train_mode: bool = True

    def __post_init__(self) -> None:
        _check_choice("init", self.init, _INIT_MODES)
        if self.init == "random" and (self.florence_weights or self.sd_weights):
            raise ValueError("Stage1ModelConfig.florence_weights / sd_weights are ignored while init='random'; to "
                             "start from them add --set train_stage1.model.init=pretrained")
        _check_choice("florence_arch", self.florence_arch, FLORENCE_ARCHS)
        _check_choice("sd_arch", self.sd_arch, DIFFUSION_ARCHS)
        _check_choice("task_prompt", self.task_prompt, FLORENCE_CAPTION_TASKS)
        if not 1 <= self.num_queries <= _CLIP_MAX_POSITIONS:
            raise ValueError(f"Stage1ModelConfig.num_queries must be in 1..{_CLIP_MAX_POSITIONS} (the CLIP text "
                             f"encoder's positions), got {self.num_queries}")
        if self.image_size <= 0 or self.image_size % 8:
            raise ValueError(f"Stage1ModelConfig.image_size must be a positive multiple of 8 (VAE), got "
                             f"{self.image_size}")
        if self.florence_image_size <= 0 or self.florence_image_size % 32:
            raise ValueError(f"Stage1ModelConfig.florence_image_size must be a positive multiple of 32 (DaViT "
                             f"strides), got {self.florence_image_size}")
        if not self.query_init_std > 0:
            raise ValueError(f"Stage1ModelConfig.query_init_std must be > 0, got {self.query_init_std}")

    def check_weights(self, prefix: str = "Stage1ModelConfig") -> None:
        """ValueError naming the field to set when `pretrained` weights are missing (call from preflight)."""
        if self.init != "pretrained":
            return
        unset = []
        if not self.florence_weights:
            unset.append(f"{prefix}.florence_weights is not set: put the transformers-native Florence-2-large "
                         f"checkpoint there (local dir, or florence-community/Florence-2-large when online)")
        if not self.sd_weights:
            unset.append(f"{prefix}.sd_weights is not set: put the Stable Diffusion 2.1 base folder there "
                         f"(with unet/, vae/, text_encoder/; or stabilityai/stable-diffusion-2-1-base online)")
        if unset:
            raise ValueError("; ".join(unset))
        check_local_weights(f"{prefix}.florence_weights", self.florence_weights)
        check_local_weights(f"{prefix}.sd_weights", self.sd_weights)

    @classmethod
    def paper(cls, florence_weights: str = "", sd_weights: str = "") -> Stage1ModelConfig:
        return cls(init="pretrained", florence_arch="florence2_large", florence_weights=florence_weights,
                   sd_arch="sd21_base", sd_weights=sd_weights, image_size=384, florence_image_size=768,
                   unet_gradient_checkpointing=True)

    @classmethod
    def tiny(cls, seed: int = 0) -> Stage1ModelConfig:
        return cls(init="random", seed=seed, florence_arch="tiny_florence2", sd_arch="tiny_sd", image_size=64,
                   florence_image_size=64)


@dataclass
class CaptionerConfig:
    # "pretrained": the Qwen2.5 weights and tokenizer from `llm_weights`. "random": seeded random init of
    # `llm_arch` with a byte-level BPE trained on the captions (`tokenizer_vocab_size` ids).
    init: Literal["pretrained", "random"] = "pretrained"
    seed: int = 0
    llm_arch: str = "qwen2.5_3b"  # qwen2.5_0.5b | qwen2.5_1.5b | qwen2.5_3b (paper) | tiny_qwen2
    llm_weights: str = ""  # local dir or hub id, e.g. Qwen/Qwen2.5-3B
    trainable: Literal["mlp", "mlp+llm", "mlp+llm+encoder"] = "mlp+llm+encoder"
    max_caption_tokens: int = 300  # caption tokens per sample, the appended end-of-caption token included
    tokenizer_vocab_size: int = 512
    llm_gradient_checkpointing: bool = False
    num_beams: int = 4
    max_new_tokens: int = 300

    def __post_init__(self) -> None:
        _check_choice("init", self.init, _INIT_MODES, "CaptionerConfig")
        if self.init == "random" and self.llm_weights:
            raise ValueError("CaptionerConfig.llm_weights is ignored while init='random'; to start from them add "
                             "--set train_stage2.model.init=pretrained")
        _check_choice("llm_arch", self.llm_arch, LLM_ARCHS, "CaptionerConfig")
        _check_choice("trainable", self.trainable, CAPTIONER_TRAINABLE, "CaptionerConfig")
        for name in ("max_caption_tokens", "num_beams", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"CaptionerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.tokenizer_vocab_size < 300:
            raise ValueError(f"CaptionerConfig.tokenizer_vocab_size must be >= 300 (256 byte symbols + special "
                             f"tokens + merges), got {self.tokenizer_vocab_size}")

    def check_weights(self, prefix: str = "CaptionerConfig") -> None:
        if self.init == "pretrained" and not self.llm_weights:
            raise ValueError(f"{prefix}.llm_weights is not set: put the Qwen2.5 base checkpoint matching llm_arch="
                             f"{self.llm_arch!r} there (local dir, or e.g. Qwen/Qwen2.5-3B when online)")
        if self.init == "pretrained":
            check_local_weights(f"{prefix}.llm_weights", self.llm_weights)

    @classmethod
    def paper(cls, llm_weights: str = "", llm_arch: str = "qwen2.5_3b") -> CaptionerConfig:
        return cls(init="pretrained", llm_arch=llm_arch, llm_weights=llm_weights, trainable="mlp+llm+encoder",
                   llm_gradient_checkpointing=True)

    @classmethod
    def tiny(cls, seed: int = 0) -> CaptionerConfig:
        return cls(init="random", seed=seed, llm_arch="tiny_qwen2", max_caption_tokens=64, tokenizer_vocab_size=512,
                   num_beams=4, max_new_tokens=32)


def check_local_weights(setting: str, value: str) -> None:
    """A weights value that names a local path must exist before any step runs (a hub id, org/name, is
    resolved when the model loads)."""
    if value.startswith(("/", ".", "~")) and not Path(value).expanduser().exists():
        raise ValueError(f"{setting}={value!r} does not exist: download the checkpoint there, or point "
                         f"{setting} at the folder that holds it")


def _check_choice(field: str, value: str, allowed: tuple[str, ...], owner: str = "Stage1ModelConfig") -> None:
    if value not in allowed:
        raise ValueError(f"{owner}.{field} must be one of {', '.join(allowed)}; got {value!r}")
