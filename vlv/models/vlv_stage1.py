"""Stage 1 of VLV: images -> caption embeddings that let the FROZEN SD 2.1 UNet denoise the same images.

`CaptionEmbedder` (Florence queries -> projection -> frozen CLIP text encoder) is the part stage 2 reuses;
`VLVStage1` adds the frozen diffusion decoder and the loss. Trainable, as docs/DESIGN.md section 2.1 lists: Florence's
transformer encoder + decoder + shared embeddings, the 77 queries, the projection. Everything else is frozen
(requires_grad False, kept in eval mode even when the model is put in train mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlv.models.clip_text import ClipTextOnEmbeddings, build_clip_text_encoder, build_clip_tokenizer
from vlv.models.config import Stage1ModelConfig
from vlv.models.diffusion import FrozenDiffusion, SamplerName, build_diffusion
from vlv.models.florence_queries import FlorenceQueryEncoder, build_florence_query_encoder
from vlv.models.image_inputs import check_uint8_images, florence_pixels, vae_pixels
from vlv.models.loading import tensor_fingerprint


@dataclass
class Stage1Batch:
    images: torch.Tensor  # uint8 (B, image_size, image_size, 3): shorter side resized, centre-cropped


class CaptionEmbedder(nn.Module):
    """uint8 images -> z (B, 77, D) in the CLIP text-encoder input space -> CLIP last hidden state (conditioning)."""

    def __init__(self, encoder: FlorenceQueryEncoder, clip_text: ClipTextOnEmbeddings, *, image_size: int,
                 florence_image_size: int):
        super().__init__()
        self.encoder = encoder
        self.clip_text = clip_text
        self.image_size = image_size
        self.florence_image_size = florence_image_size

    @property
    def hidden_size(self) -> int:
        return self.clip_text.hidden_size

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.encoder.trainable_parameters()

    def train(self, mode: bool = True) -> CaptionEmbedder:
        super().train(mode)
        self.encoder.train(mode)  # keeps its own frozen parts in eval
        self.clip_text.eval()
        return self

    def caption_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """z: what stage 1 learns, fed to the CLIP text encoder as token embeddings."""
        check_uint8_images(images, self.image_size)
        queries = self.encoder.queries
        pixels = florence_pixels(images, self.florence_image_size, dtype=queries.dtype, device=queries.device)
        return self.encoder(pixels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip_text(self.caption_embeddings(images))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trained tensors (what a stage-1 run adds on top of the pretrained weights)."""
        wanted = {id(p) for p in self.trainable_parameters()}
        return {name: p.detach().clone() for name, p in self.named_parameters() if id(p) in wanted}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load `trainable_state_dict()` output; every trainable tensor must be present and nothing else.

        Also takes a whole-model export of VLVStage1 or VLVCaptioner (both hold this module as `embedder`, so
        their keys are `embedder.<name>`): the prefix is stripped.
        """
        if state and all(key.startswith("embedder.") for key in state):
            state = {key.removeprefix("embedder."): value for key, value in state.items()}
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"stage-1 encoder state does not match this model: missing {missing[:3]} "
                             f"({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)}); was it saved "
                             f"from a model with the same florence_arch / num_queries / sd_arch?")
        self.load_state_dict(state, strict=False)


class VLVStage1(nn.Module):
    def __init__(self, embedder: CaptionEmbedder, diffusion: FrozenDiffusion, clip_tokenizer):
        super().__init__()
        self.embedder = embedder
        self.diffusion = diffusion
        self.clip_tokenizer = clip_tokenizer  # for the empty prompt of classifier-free guidance

    def forward(self, batch: Stage1Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar loss MSE(eps, eps_theta(z_t, t, cond)); `generator` fixes t, noise and the VAE sample."""
        cond = self.embedder(batch.images)
        pixels = vae_pixels(batch.images.to(cond.device), dtype=self.diffusion.vae.dtype)
        return self.diffusion.denoising_loss(pixels, cond, generator)

    def train(self, mode: bool = True) -> VLVStage1:
        super().train(mode)
        self.embedder.train(mode)
        self.diffusion.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.embedder.trainable_parameters()

    def frozen_named_tensors(self) -> list[tuple[str, torch.Tensor]]:
        trainable = {id(p) for p in self.trainable_parameters()}
        params = [(name, p) for name, p in self.named_parameters() if id(p) not in trainable]
        return params + list(self.named_buffers())

    def frozen_state_fingerprint(self) -> str:
        """sha256 over every frozen parameter and buffer: unchanged by training iff the frozen set is untouched."""
        return tensor_fingerprint(self.frozen_named_tensors())

    @torch.no_grad()
    def generate_images(self, images: torch.Tensor, *, num_steps: int = 50, guidance_scale: float = 1.0,
                        generator: torch.Generator | None = None, sampler: SamplerName = "ddpm") -> torch.Tensor:
        """Reconstructions: images -> caption embeddings -> SD sampling (DDPM as the official inference, or DDIM).
        Returns uint8 (B, H, W, 3).

        Runs in eval mode (no dropout), then restores the previous mode, so it is safe mid-training.
        """
        was_training = self.training
        self.eval()
        try:
            cond = self.embedder(images)
            uncond = None
            if guidance_scale != 1.0:
                uncond = self.embedder.clip_text.empty_prompt_embedding(self.clip_tokenizer).to(cond.dtype)
            return self.diffusion.sample(cond, image_size=self.embedder.image_size, num_steps=num_steps,
                                         guidance_scale=guidance_scale, uncond=uncond, generator=generator,
                                         sampler=sampler)
        finally:
            self.train(was_training)


def build_caption_embedder(cfg: Stage1ModelConfig) -> CaptionEmbedder:
    """Only the image -> conditioning half (what stage 2 needs: no UNet, no VAE)."""
    cfg.check_weights()
    clip_text = build_clip_text_encoder(arch=cfg.sd_arch, weights=cfg.sd_weights, init=cfg.init, seed=cfg.seed + 10)
    encoder = build_florence_query_encoder(arch=cfg.florence_arch, weights=cfg.florence_weights, init=cfg.init,
                                           seed=cfg.seed, num_queries=cfg.num_queries,
                                           out_dim=clip_text.hidden_size, query_init_std=cfg.query_init_std,
                                           task_prompt=cfg.task_prompt,
                                           frozen_vision_train_mode=cfg.frozen_vision_train_mode)
    embedder = CaptionEmbedder(encoder, clip_text, image_size=cfg.image_size,
                               florence_image_size=cfg.florence_image_size)
    return embedder.train()


def build_stage1_model(cfg: Stage1ModelConfig) -> VLVStage1:
    cfg.check_weights()
    embedder = build_caption_embedder(cfg)
    diffusion = build_diffusion(arch=cfg.sd_arch, weights=cfg.sd_weights, init=cfg.init, seed=cfg.seed + 20)
    cross_dim = diffusion.unet.config.cross_attention_dim
    if cross_dim != embedder.hidden_size:
        raise ValueError(f"UNet cross_attention_dim {cross_dim} != CLIP text hidden size {embedder.hidden_size}: "
                         f"florence/sd archs or weights do not belong together")
    if cfg.unet_gradient_checkpointing:
        diffusion.unet.enable_gradient_checkpointing()
    model = VLVStage1(embedder, diffusion, build_clip_tokenizer())
    return model.train()
