"""The trained-model folder format: what the training steps publish and inference, evaluation and serving load
(docs/DESIGN.md section 4.7).

A stage-1 folder holds what stage 1 trained on top of the frozen/pretrained weights:
    stage1_model.json              the Stage1ModelConfig (architecture, weight paths, seed of the random init)
    stage1_trainable.safetensors   the trainable tensors (Florence transformer, queries, projection)
A stage-2 folder is a self-contained captioner: the stage-1 files it started from, plus
    captioner_model.json           the CaptionerConfig
    captioner_trainable.safetensors  the tensors stage 2 trained (MLP, and the LLM / encoder if unfrozen)
    tokenizer/                     the LLM tokenizer (trained BPE for `tiny`, the Qwen tokenizer for `paper`)
Frozen weights are rebuilt from the config: from the pretrained paths, or from the seeded random init.
Writing and reading live together here, below both the training steps and inference, so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from vlv.config_tree import build
from vlv.models.caption_tokenizer import load_caption_tokenizer
from vlv.models.config import CaptionerConfig, Stage1ModelConfig

if TYPE_CHECKING:  # the model modules load torch and transformers: imported where a model is built
    import torch
    from transformers import PreTrainedTokenizerBase

    from vlv.models.captioner import VLVCaptioner
    from vlv.models.vlv_stage1 import CaptionEmbedder, VLVStage1

STAGE1_CONFIG = "stage1_model.json"
STAGE1_WEIGHTS = "stage1_trainable.safetensors"
CAPTIONER_CONFIG = "captioner_model.json"
CAPTIONER_WEIGHTS = "captioner_trainable.safetensors"
TOKENIZER_DIR = "tokenizer"


def save_stage1_checkpoint(out_dir: str | Path, model_cfg: Stage1ModelConfig, trainable_weights_file: str | Path
                           ) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / STAGE1_CONFIG).write_text(json.dumps(dataclasses.asdict(model_cfg), indent=2, sort_keys=True))
    if Path(trainable_weights_file).resolve() != (out / STAGE1_WEIGHTS).resolve():
        shutil.copyfile(trainable_weights_file, out / STAGE1_WEIGHTS)
    return out


def save_captioner_checkpoint(out_dir: str | Path, stage1_dir: str | Path, captioner_cfg: CaptionerConfig,
                              trainable_weights_file: str | Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (STAGE1_CONFIG, STAGE1_WEIGHTS):
        shutil.copyfile(_require(Path(stage1_dir), name), out / name)
    (out / CAPTIONER_CONFIG).write_text(json.dumps(dataclasses.asdict(captioner_cfg), indent=2, sort_keys=True))
    if Path(trainable_weights_file).resolve() != (out / CAPTIONER_WEIGHTS).resolve():
        shutil.copyfile(trainable_weights_file, out / CAPTIONER_WEIGHTS)
    tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    return out


def read_stage1_config(folder: str | Path) -> Stage1ModelConfig:
    return build(Stage1ModelConfig, json.loads(_require(Path(folder), STAGE1_CONFIG).read_text()))


def read_captioner_config(folder: str | Path) -> CaptionerConfig:
    return build(CaptionerConfig, json.loads(_require(Path(folder), CAPTIONER_CONFIG).read_text()))


def load_caption_embedder(folder: str | Path) -> CaptionEmbedder:
    """The trained image -> conditioning half of stage 1 (what stage 2 builds on)."""
    from vlv.models.vlv_stage1 import build_caption_embedder

    embedder = build_caption_embedder(read_stage1_config(folder))
    embedder.load_trainable_state_dict(_load_tensors(Path(folder) / STAGE1_WEIGHTS))
    return embedder.eval()


def load_stage1(folder: str | Path) -> VLVStage1:
    """The whole trained stage-1 model (encoder + frozen diffusion decoder), e.g. for reconstructions."""
    from vlv.models.vlv_stage1 import build_stage1_model

    model = build_stage1_model(read_stage1_config(folder))
    model.embedder.load_trainable_state_dict(_load_tensors(Path(folder) / STAGE1_WEIGHTS))
    return model.eval()


def load_captioner(folder: str | Path) -> VLVCaptioner:
    """A trained stage-2 captioner from its self-contained folder."""
    from vlv.models.captioner import build_captioner

    folder = Path(folder)
    cfg = read_captioner_config(folder)
    embedder = load_caption_embedder(folder)
    tokenizer = load_caption_tokenizer(cfg, str(_require(folder, TOKENIZER_DIR)))
    captioner = build_captioner(cfg, embedder, tokenizer)
    state = _load_tensors(folder / CAPTIONER_WEIGHTS)
    check_captioner_state(captioner, state, folder / CAPTIONER_WEIGHTS)
    captioner.load_state_dict(state, strict=False)
    return captioner.eval()


def check_captioner_state(captioner: VLVCaptioner, state: dict[str, torch.Tensor], path: Path) -> None:
    """The weights file must hold exactly the tensors this captioner trains: a missing one would silently stay
    at its pretrained (or random) value, an extra one belongs to another model or trainable set."""
    trainable = sorted(name for name, param in captioner.named_parameters() if param.requires_grad)
    missing, unexpected = sorted(set(trainable) - set(state)), sorted(set(state) - set(trainable))
    if missing:
        raise ValueError(
            f"{path} lacks {len(missing)} of the {len(trainable)} tensors this captioner trains (e.g. "
            f"{', '.join(missing[:3])}); captioner_model.json says trainable={captioner.trainable_set!r}. Likely "
            f"cause: the weights file was written by a run with a smaller trainable set, or copied from another "
            f"run, or cut short. Point at the folder train_stage2 published, or rerun it (--force train_stage2)")
    if unexpected:
        raise ValueError(
            f"{path} holds {len(unexpected)} tensors this captioner does not train (e.g. "
            f"{', '.join(unexpected[:3])}); was it trained with the same llm_arch, trainable set and stage-1 "
            f"folder? (A checkpoint from before stage 2 kept the stage-1 queries and projection frozen also holds "
            f"those.) Rerun it with --force train_stage2")


def _require(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.exists():
        raise ValueError(f"{folder} is not a trained VLV model folder: {name} is missing (point at the output of "
                         f"train_stage1 / train_stage2, e.g. vlv_runs/steps/train_stage2/<key>)")
    return path


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise ValueError(f"weights file {path} is missing; rerun the training step that writes it")
    return load_file(str(path))
