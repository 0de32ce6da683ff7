"""The shipped `paper` architecture configs build on the meta device with the published parameter counts."""

from __future__ import annotations

import pytest
import torch

from vlv.models import arch_configs
from vlv.models.loading import count_parameters

# Published sizes (model cards / papers) and the exact counts of the released checkpoints where known.
PUBLISHED = {
    "florence2_large": 0.77e9,  # Florence-2-large model card: 0.77B
    "sd21_base/unet": 865_910_724,  # stable-diffusion-2-1-base unet: 865.9M
    "sd21_base/vae": 83_653_863,  # AutoencoderKL: 83.65M
    "sd21_base/text_encoder": 340_387_840,  # OpenCLIP ViT-H/14 text tower, 23 layers in the diffusers conversion
    "qwen2.5_0.5b": 0.494e9,  # Qwen2.5 report: 0.49B (494M with tied embeddings)
    "qwen2.5_1.5b": 1.54e9,
    "qwen2.5_3b": 3.09e9,
}


def _build_on_meta(name: str) -> torch.nn.Module:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, Florence2ForConditionalGeneration, Qwen2ForCausalLM

    with torch.device("meta"):
        if name.startswith("florence"):
            return Florence2ForConditionalGeneration(arch_configs.florence_config(name))
        if name.endswith("/unet"):
            return UNet2DConditionModel.from_config(arch_configs.unet_config(name.split("/")[0]))
        if name.endswith("/vae"):
            return AutoencoderKL.from_config(arch_configs.vae_config(name.split("/")[0]))
        if name.endswith("/text_encoder"):
            return CLIPTextModel(arch_configs.clip_text_config(name.split("/")[0]))
        return Qwen2ForCausalLM(arch_configs.llm_config(name))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_paper_model_parameter_count_matches_publication(name):
    model = _build_on_meta(name)
    assert all(p.device.type == "meta" for p in model.parameters())
    count = count_parameters(model)
    assert abs(count - PUBLISHED[name]) / PUBLISHED[name] < 0.01, f"{name}: {count:,}"


def test_paper_shapes_fit_together():
    florence = arch_configs.florence_config("florence2_large")
    clip = arch_configs.clip_text_config("sd21_base")
    unet = arch_configs.unet_config("sd21_base")
    assert florence.text_config.d_model == 1024 == clip.hidden_size == unet["cross_attention_dim"]
    assert florence.vision_config.projection_dim == florence.text_config.d_model
    assert clip.num_hidden_layers == 23 and clip.max_position_embeddings == 77
    sizes = ("qwen2.5_0.5b", "qwen2.5_1.5b", "qwen2.5_3b")
    hidden = {name: arch_configs.llm_config(name).hidden_size for name in sizes}
    assert hidden == {"qwen2.5_0.5b": 896, "qwen2.5_1.5b": 1536, "qwen2.5_3b": 2048}


def test_tiny_archs_use_the_same_classes_and_block_types():
    tiny, paper = arch_configs.unet_config("tiny_sd"), arch_configs.unet_config("sd21_base")
    assert set(tiny["down_block_types"]) <= set(paper["down_block_types"])
    assert tiny["cross_attention_dim"] == arch_configs.clip_text_config("tiny_sd").hidden_size
    assert arch_configs.noise_schedule_config("tiny_sd") == arch_configs.noise_schedule_config("sd21_base")
    assert arch_configs.florence_config("tiny_florence2").model_type == "florence2"


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="allowed"):
        arch_configs.llm_config("qwen2.5_7b")


def test_paper_stage1_composition_on_meta_has_the_spec_trainable_set():
    """The whole paper stage-1 model, built by our builder on the meta device (random init: no weights needed)."""
    import dataclasses

    from vlv.models.config import Stage1ModelConfig
    from vlv.models.vlv_stage1 import build_stage1_model

    with torch.device("meta"):
        model = build_stage1_model(dataclasses.replace(Stage1ModelConfig.paper(), init="random"))
    florence = model.embedder.encoder.florence
    trainable = sum(p.numel() for p in model.trainable_parameters())
    queries, projection = 77 * 1024, 2 * (1024 * 1024 + 1024)
    assert trainable == count_parameters(florence.language_model) + queries + projection == 409_558_016
    frozen = count_parameters(model) - trainable
    assert frozen == (count_parameters(florence.vision_tower) + count_parameters(florence.multi_modal_projector)
                      + 340_387_840 + 865_910_724 + 83_653_863)
