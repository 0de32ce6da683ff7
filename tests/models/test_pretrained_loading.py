"""The `pretrained` code path (what `paper` runs) on local folders in the real checkpoint layouts, written here
from tiny random models: Florence-2 (transformers-native), SD 2.1 (diffusers folders), Qwen2 + tokenizer."""

from __future__ import annotations

import pytest
import torch

from vlv.models import arch_configs
from vlv.models.captioner import build_caption_tokenizer, build_captioner
from vlv.models.clip_text import build_clip_tokenizer
from vlv.models.config import CaptionerConfig, Stage1ModelConfig
from vlv.models.loading import seeded_init
from vlv.models.vlv_stage1 import Stage1Batch, build_stage1_model
from vlv.testing.builders import CAPTIONS, uint8_images


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, Florence2ForConditionalGeneration

    root = tmp_path_factory.mktemp("checkpoints")
    with seeded_init(123):
        florence = Florence2ForConditionalGeneration(arch_configs.florence_config("tiny_florence2"))
        unet = UNet2DConditionModel.from_config(arch_configs.unet_config("tiny_sd"))
        vae = AutoencoderKL.from_config(arch_configs.vae_config("tiny_sd"))
        clip = CLIPTextModel(arch_configs.clip_text_config("tiny_sd"))
    florence.save_pretrained(root / "florence")
    build_clip_tokenizer().save_pretrained(str(root / "florence"))  # stands in for Florence's BART tokenizer
    unet.save_pretrained(root / "sd" / "unet")
    vae.save_pretrained(root / "sd" / "vae")
    clip.save_pretrained(root / "sd" / "text_encoder")
    return {"root": root, "florence": florence, "unet": unet, "clip": clip}


def _pretrained_cfg(root) -> Stage1ModelConfig:
    return Stage1ModelConfig(init="pretrained", florence_arch="tiny_florence2", florence_weights=str(root / "florence"),
                             sd_arch="tiny_sd", sd_weights=str(root / "sd"), image_size=64, florence_image_size=64)


def test_stage1_loads_every_pretrained_weight(checkpoints):
    model = build_stage1_model(_pretrained_cfg(checkpoints["root"]))
    florence, saved = model.embedder.encoder.florence, checkpoints["florence"].model
    assert torch.equal(florence.language_model.shared.weight, saved.language_model.shared.weight)
    assert torch.equal(florence.vision_tower.convs[0].conv.weight,
                       checkpoints["florence"].model.vision_tower.convs[0].conv.weight)
    assert torch.equal(model.diffusion.unet.conv_in.weight, checkpoints["unet"].conv_in.weight)
    assert torch.equal(model.embedder.clip_text.model.final_layer_norm.weight,
                       checkpoints["clip"].final_layer_norm.weight)
    # The task prompt comes from the checkpoint's own tokenizer: <s> instruction </s> with its bos/eos ids.
    prompt = model.embedder.encoder.prompt_ids.tolist()
    assert prompt[0] == 49406 and prompt[-1] == 49407 and len(prompt) > 5
    loss = model(Stage1Batch(uint8_images(2, 64)), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_florence_checkpoint_in_the_wrong_layout_is_refused(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    source = checkpoints["root"] / "florence"
    for path in source.iterdir():
        target = tmp_path / path.name
        if path.suffix == ".safetensors":  # remote-code layout: language_model.model.*, not model.language_model.*
            state = {key.replace("model.language_model.", "language_model.model."): value
                     for key, value in load_file(str(path)).items()}
            save_file(state, str(target), metadata={"format": "pt"})
        else:
            target.write_bytes(path.read_bytes())
    cfg = _pretrained_cfg(checkpoints["root"])
    cfg.florence_weights = str(tmp_path)
    with pytest.raises(ValueError, match="not a transformers-native Florence-2 checkpoint"):
        build_stage1_model(cfg)


# config.json of the remote-code release (microsoft/Florence-2-large), the fields that identify it.
REMOTE_CODE_CONFIG = {
    "architectures": ["Florence2ForConditionalGeneration"],
    "auto_map": {"AutoConfig": "configuration_florence2.Florence2Config",
                 "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"},
    "model_type": "florence2", "projection_dim": 1024, "vocab_size": 51289, "is_encoder_decoder": True,
    "text_config": {"model_type": "florence2_language", "vocab_size": 51289, "d_model": 1024},
    "vision_config": {"model_type": "davit", "dim_embed": [256, 512, 1024, 2048], "depths": [1, 1, 9, 1],
                      "drop_path_rate": 0.1, "projection_dim": 1024},
}


def test_remote_code_florence_checkpoint_is_refused_with_how_to_convert(checkpoints, tmp_path):
    import json

    for path in (checkpoints["root"] / "florence").iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(REMOTE_CODE_CONFIG))
    cfg = _pretrained_cfg(checkpoints["root"])
    cfg.florence_weights = str(tmp_path)
    with pytest.raises(ValueError, match=r"florence_weights=.* is a remote-code Florence-2 checkpoint \(the "
                                         r"microsoft/Florence-2-large layout.*auto_map in config.json.*"
                                         r"florence-community/Florence-2-large.*51,328.*"
                                         r"convert_florence2_original_pytorch_to_hf.py --hf_model_id"):
        build_stage1_model(cfg)
    without_auto_map = {k: v for k, v in REMOTE_CODE_CONFIG.items() if k != "auto_map"}  # still a DaViT config
    (tmp_path / "config.json").write_text(json.dumps(without_auto_map))
    with pytest.raises(ValueError, match="remote-code Florence-2 checkpoint .*DaViT vision_config"):
        build_stage1_model(cfg)


def test_captioner_loads_llm_and_tokenizer_from_a_folder(tmp_path):
    from transformers import Qwen2ForCausalLM

    tiny = CaptionerConfig.tiny()
    tokenizer = build_caption_tokenizer(tiny, CAPTIONS)
    with seeded_init(7):
        llm = Qwen2ForCausalLM(arch_configs.llm_config("tiny_qwen2", vocab_size=448))  # padded, like Qwen2.5
    llm.save_pretrained(tmp_path)
    tokenizer.save_pretrained(str(tmp_path))
    cfg = CaptionerConfig(init="pretrained", llm_arch="tiny_qwen2", llm_weights=str(tmp_path), max_caption_tokens=32)
    loaded_tokenizer = build_caption_tokenizer(cfg)
    assert loaded_tokenizer.eos_token_id == tokenizer.eos_token_id
    assert loaded_tokenizer(CAPTIONS[0]).input_ids == tokenizer(CAPTIONS[0]).input_ids
    from vlv.models.vlv_stage1 import build_caption_embedder

    captioner = build_captioner(cfg, build_caption_embedder(Stage1ModelConfig.tiny()), loaded_tokenizer)
    assert torch.equal(captioner.llm.get_input_embeddings().weight, llm.get_input_embeddings().weight)
    assert len(captioner.generate(uint8_images(1, 64), num_beams=2, max_new_tokens=4)) == 1

    wrong = CaptionerConfig(init="pretrained", llm_arch="qwen2.5_0.5b", llm_weights=str(tmp_path))
    with pytest.raises(ValueError, match="hidden size"):
        build_captioner(wrong, captioner.embedder, loaded_tokenizer)
