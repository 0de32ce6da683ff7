"""Stage 2 of VLV: image -> stage-1 caption embedder -> MLP -> Qwen2 causal LM -> caption text.

Sequence fed to the LLM: [77 prefix embeddings][caption token embeddings + end-of-caption], no text prompt and
no chat template. Labels are IGNORE on the prefix and on padding; the end-of-caption token is supervised (see
`caption_tokenizer`). Trainable sets follow the paper's progressive unfreezing (Table 4): `mlp`, `mlp+llm`,
`mlp+llm+encoder`, where "encoder" is what the official stage-2 script unfreezes with
`--unfreeze_florence2_language_model`: Florence's transformer (encoder, decoder, shared embeddings) only. The 77
queries and the projection stay frozen in every mode, since they define the SD-compatible caption-embedding space
stage 1 learned; so do DaViT, the image projection and the CLIP text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from vlv.models.arch_configs import llm_config
from vlv.models.caption_postprocess import clean_caption
from vlv.models.caption_tokenizer import CaptionTokens, build_caption_labels, tokenize_captions, train_caption_tokenizer
from vlv.models.config import CaptionerConfig
from vlv.models.loading import freeze, require_weights, seeded_init, unique_parameters
from vlv.models.vlv_stage1 import CaptionEmbedder

if TYPE_CHECKING:  # transformers is imported where used
    from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM


@dataclass
class CaptionBatch:
    images: torch.Tensor  # uint8 (B, image_size, image_size, 3)
    input_ids: torch.Tensor  # long (B, T): caption tokens + end-of-caption, right-padded
    attention_mask: torch.Tensor  # long (B, T): 1 on real tokens (end-of-caption included), 0 on padding


class PrefixMLP(nn.Sequential):
    """Linear(D_clip, H) -> GELU -> Linear(H, H): CLIP conditioning -> LLM input embeddings."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))


class VLVCaptioner(nn.Module):
    def __init__(self, embedder: CaptionEmbedder, llm: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, *,
                 trainable: str, max_caption_tokens: int, mlp: PrefixMLP):
        super().__init__()
        self.embedder = embedder
        self.mlp = mlp
        self.llm = llm
        self.tokenizer = tokenizer
        self.max_caption_tokens = max_caption_tokens
        self.trainable_set = trainable
        self._apply_trainable_set()

    @property
    def num_prefix(self) -> int:
        return self.embedder.encoder.num_queries

    @property
    def encoder_trains(self) -> bool:
        return "encoder" in self.trainable_set

    @property
    def llm_trains(self) -> bool:
        return "llm" in self.trainable_set

    def _apply_trainable_set(self) -> None:
        freeze(self.embedder)
        freeze(self.llm)
        groups: list[nn.Module | nn.Parameter] = [self.mlp]
        if self.llm_trains:
            groups.append(self.llm)
        if self.encoder_trains:
            groups.append(self.embedder.encoder.florence.language_model)
        for param in unique_parameters(groups):
            param.requires_grad_(True)
        self.train(self.training)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [param for param in unique_parameters([self]) if param.requires_grad]

    def train(self, mode: bool = True) -> VLVCaptioner:
        super().train(mode)
        self.embedder.train(mode and self.encoder_trains)
        self.llm.train(mode and self.llm_trains)
        return self

    def make_batch(self, images: torch.Tensor, captions: Sequence[str]) -> CaptionBatch:
        if len(captions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        tokens: CaptionTokens = tokenize_captions(self.tokenizer, captions, self.max_caption_tokens)
        return CaptionBatch(images=images, input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)

    def prefix_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 77, H) LLM input embeddings for the images."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.encoder_trains):
            cond = self.embedder(images)
        prefix = self.mlp(cond.to(self.mlp[0].weight.dtype))
        return prefix.to(self.llm.get_input_embeddings().weight.dtype)

    def forward(self, batch: CaptionBatch) -> torch.Tensor:
        """Scalar mean cross-entropy over the supervised caption tokens (end-of-caption included)."""
        device = self.llm.get_input_embeddings().weight.device
        input_ids, attention_mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        prefix = self.prefix_embeddings(batch.images.to(device))
        tokens = self.llm.get_input_embeddings()(input_ids)
        inputs_embeds = torch.cat([prefix, tokens], dim=1)
        prefix_mask = torch.ones(prefix.shape[:2], dtype=attention_mask.dtype, device=device)
        labels = build_caption_labels(input_ids, attention_mask, self.num_prefix)
        output = self.llm(inputs_embeds=inputs_embeds, attention_mask=torch.cat([prefix_mask, attention_mask], 1),
                          labels=labels, use_cache=False)
        return output.loss

    @torch.no_grad()
    def generate(self, images: torch.Tensor, *, num_beams: int = 4, max_new_tokens: int = 300,
                 postprocess: bool = True) -> list[str]:
        """Beam search from the image prefix alone; then trim to the last full sentence and drop repeats.

        Runs in eval mode (no dropout), then restores the previous mode, so it is safe mid-training.
        """
        was_training = self.training
        self.eval()
        try:
            device = self.llm.get_input_embeddings().weight.device
            prefix = self.prefix_embeddings(images.to(device))
            mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=device)
            eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
            generated = self.llm.generate(inputs_embeds=prefix, attention_mask=mask, num_beams=num_beams,
                                          max_new_tokens=max_new_tokens, do_sample=False, early_stopping=True,
                                          eos_token_id=eos, pad_token_id=eos if pad is None else pad)
        finally:
            self.train(was_training)
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return [clean_caption(text) if postprocess else " ".join(text.split()) for text in texts]


def build_caption_tokenizer(cfg: CaptionerConfig, captions: Sequence[str] | None = None,
                            out_dir: str | Path | None = None) -> PreTrainedTokenizerBase:
    """Pretrained: the LLM checkpoint's tokenizer. Random (tiny): a byte-level BPE trained on `captions`."""
    if cfg.init == "pretrained":
        from transformers import AutoTokenizer

        cfg.check_weights()
        tokenizer = AutoTokenizer.from_pretrained(require_weights(cfg.llm_weights, "CaptionerConfig.llm_weights",
                                                                  "the Qwen2.5 base checkpoint"))
        if tokenizer.eos_token_id is None:
            raise ValueError(f"the tokenizer in {cfg.llm_weights} has no eos_token; the captioner needs one")
        return tokenizer
    if not captions:
        raise ValueError("CaptionerConfig.init='random' trains the caption tokenizer on the captions: pass them")
    return train_caption_tokenizer(list(captions), cfg.tokenizer_vocab_size, out_dir)


def build_captioner(cfg: CaptionerConfig, embedder: CaptionEmbedder, tokenizer: PreTrainedTokenizerBase
                    ) -> VLVCaptioner:
    """Stage-2 model around a stage-1 `CaptionEmbedder` (load its trained state before or after, same keys)."""
    from transformers import Qwen2ForCausalLM

    cfg.check_weights()
    if cfg.init == "pretrained":
        path = require_weights(cfg.llm_weights, "CaptionerConfig.llm_weights", "the Qwen2.5 base checkpoint")
        llm = Qwen2ForCausalLM.from_pretrained(path)
        expected = llm_config(cfg.llm_arch).hidden_size
        if llm.config.hidden_size != expected:
            raise ValueError(f"CaptionerConfig.llm_weights={path!r} has hidden size {llm.config.hidden_size}, but "
                             f"llm_arch={cfg.llm_arch!r} is {expected}: make them name the same model")
    else:
        with seeded_init(cfg.seed + 30):
            llm = Qwen2ForCausalLM(_tiny_llm_config(cfg, tokenizer))
    if len(tokenizer) > llm.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids but the LLM only {llm.config.vocab_size} embeddings")
    if cfg.llm_gradient_checkpointing:
        llm.gradient_checkpointing_enable()
    with seeded_init(cfg.seed + 31):
        mlp = PrefixMLP(embedder.hidden_size, llm.config.hidden_size)
    return VLVCaptioner(embedder, llm, tokenizer, trainable=cfg.trainable, max_caption_tokens=cfg.max_caption_tokens,
                        mlp=mlp)


def _tiny_llm_config(cfg: CaptionerConfig, tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    # Embedding rows rounded up to a multiple of 64, as Qwen2.5 pads its vocabulary (151665 ids -> 151936 rows).
    config = llm_config(cfg.llm_arch, vocab_size=-(-len(tokenizer) // 64) * 64)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return config
