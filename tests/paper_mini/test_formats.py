"""Every paper_mini asset loads through the same function the paper preset calls, in the paper's on-disk format."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vlv.config import load_config
from vlv.paper_mini.layout import INCEPTION_SHA256
from vlv.presets import paper


@pytest.fixture(scope="module")
def config(paper_mini_assets):
    return load_config("paper_mini")


def test_florence_checkpoint_processor_and_tokenizer_load_as_the_paper_loads_them(config):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoProcessor, Florence2Model, Florence2Processor

    from vlv.models.florence_queries import florence_prompt_ids, load_florence
    from vlv.models.image_inputs import florence_pixels

    model_cfg = config.train_stage1.model
    florence, tokenizer = load_florence(arch=model_cfg.florence_arch, weights=model_cfg.florence_weights,
                                        init="pretrained", seed=0)
    assert isinstance(florence, Florence2Model) and florence.config.text_config.d_model == 64
    assert tokenizer.bos_token == "<s>" and tokenizer.eos_token == "</s>" and tokenizer.pad_token_id == 1
    assert tokenizer.convert_tokens_to_ids("<loc_999>") < tokenizer.image_token_id == florence.config.image_token_id
    processor = AutoProcessor.from_pretrained(model_cfg.florence_weights)
    assert isinstance(processor, Florence2Processor)
    assert processor.image_processor.size == {"height": 768, "width": 768} == {
        "height": model_cfg.florence_image_size, "width": model_cfg.florence_image_size}
    photo = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    inputs = processor(text=model_cfg.task_prompt, images=photo, return_tensors="pt")
    assert tuple(inputs.pixel_values.shape) == (1, 3, 768, 768)
    ids = inputs.input_ids[0].tolist()
    assert ids[:577] == [tokenizer.image_token_id] * 577  # the image tokens the 577 visual tokens replace
    assert ids[577:] == florence_prompt_ids(tokenizer, model_cfg.task_prompt)  # our prompt = the processor's
    with torch.no_grad():
        visual = florence.get_image_features(inputs.pixel_values).pooler_output
    assert tuple(visual.shape) == (1, 577, 64)
    # The training path's pixels are the checkpoint's own image processor's (its PIL path), bit for bit.
    pil_processor = AutoImageProcessor.from_pretrained(model_cfg.florence_weights, backend="pil")
    square = np.asarray(Image.fromarray(photo).resize((model_cfg.image_size, model_cfg.image_size)))
    expected = pil_processor(images=square, return_tensors="pt").pixel_values
    assert torch.equal(florence_pixels(torch.from_numpy(square[None]), model_cfg.florence_image_size), expected)


def test_sd21_folder_loads_with_its_scheduler_and_tokenizer(config):
    from diffusers import PNDMScheduler
    from transformers import CLIPTokenizer

    from vlv.models.arch_configs import noise_schedule_config
    from vlv.models.clip_text import build_clip_text_encoder, build_clip_tokenizer
    from vlv.models.diffusion import build_diffusion

    model_cfg = config.train_stage1.model
    folder = model_cfg.sd_weights
    index = json.loads(open(f"{folder}/model_index.json").read())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["scheduler"] == ["diffusers", "PNDMScheduler"]
    scheduler = json.loads(open(f"{folder}/scheduler/scheduler_config.json").read())
    paper_schedule = noise_schedule_config("sd21_base")
    for name in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type", "steps_offset",
                 "clip_sample", "set_alpha_to_one"):
        assert scheduler[name] == paper_schedule[name], name
    assert isinstance(PNDMScheduler.from_pretrained(folder, subfolder="scheduler"), PNDMScheduler)
    diffusion = build_diffusion(arch=model_cfg.sd_arch, weights=folder, init="pretrained", seed=0)
    clip = build_clip_text_encoder(arch=model_cfg.sd_arch, weights=folder, init="pretrained", seed=0)
    assert diffusion.latent_scale == 0.18215 and diffusion.vae_downsample == 8
    assert diffusion.unet.config.cross_attention_dim == clip.hidden_size == 64
    saved = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    prompt = "a red motorcycle parked in a garage"
    assert saved(prompt).input_ids == build_clip_tokenizer()(prompt).input_ids
    assert saved.pad_token == "!"  # SD 2.x pads with "!", not the end token


def test_qwen_folder_and_tokenizer_load_through_the_captioner_builders(config):
    from transformers import Qwen2ForCausalLM

    from vlv.models.captioner import build_caption_tokenizer, build_captioner
    from vlv.models.vlv_stage1 import build_caption_embedder

    captioner_cfg = config.train_stage2.model
    tokenizer = build_caption_tokenizer(captioner_cfg)
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>" and tokenizer.bos_token is None
    assert [tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|file_sep|>")] == [
        768, 769, 789]
    files = {path.name for path in Path(captioner_cfg.llm_weights).iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
            "tokenizer_config.json"} <= files
    assert tokenizer.decode(tokenizer("A cat, 2 o'clock!").input_ids) == "A cat, 2 o'clock!"
    captioner = build_captioner(captioner_cfg, build_caption_embedder(config.train_stage1.model), tokenizer)
    assert isinstance(captioner.llm, Qwen2ForCausalLM) and captioner.llm.config.hidden_size == 64
    assert captioner.llm.is_gradient_checkpointing  # the paper's setting, kept


def test_open_clip_model_has_the_vit_l14_layout_and_embeds_at_768(config):
    import open_clip

    from vlv.models.clip_embedder import build_clip_embedder

    cfg = config.aesthetic_filter
    embedder = build_clip_embedder(cfg.model, model_name=cfg.clip_model, pretrained=cfg.clip_pretrained,
                                   cache_dir=cfg.clip_cache_dir)
    assert embedder.embed_dim == 768
    photos = [np.random.default_rng(i).integers(0, 256, (240, 320, 3), dtype=np.uint8) for i in range(2)]
    embeddings = embedder.embed(photos)
    assert embeddings.shape == (2, 768) and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    with torch.device("meta"):  # the real ViT-L/14, without allocating its 428M parameters
        reference = open_clip.CLIP(**open_clip.get_model_config("ViT-L-14"), quick_gelu=True)

    def layout(model):  # block indices folded: ViT-L/14 has 24 vision and 12 text blocks, the miniature fewer
        return {re.sub(r"resblocks\.\d+\.", "resblocks.N.", name) for name in model.state_dict()}

    assert layout(embedder.model) == layout(reference)
    assert embedder.model.visual.proj.shape[1] == reference.visual.proj.shape[1] == 768
    assert embedder.model.visual.conv1.kernel_size == reference.visual.conv1.kernel_size == (14, 14)


def test_aesthetic_predictor_file_is_the_published_state_dict_and_splits_at_the_paper_threshold(
        config, paper_mini_assets):
    from vlv.models.aesthetic import load_predictor

    cfg = config.aesthetic_filter
    state = torch.load(cfg.predictor_weights, map_location="cpu", weights_only=True)
    assert sorted(state) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    predictor = load_predictor(cfg.predictor, cfg.predictor_weights)
    assert predictor.layers[0].in_features == 768
    scores = json.loads(paper_mini_assets.manifest.read_text())["aesthetic_scores"]
    threshold = paper().aesthetic_filter.threshold
    assert 0 < sum(score >= threshold for score in scores) < len(scores)  # the threshold keeps some, drops some


def test_inception_file_loads_only_with_its_own_hash(config, tmp_path):
    from vlv.eval.inception import InceptionFeatureExtractor, InceptionSpec

    spec = config.eval_fid.inception_spec()
    assert spec.weights_sha256 == INCEPTION_SHA256 and not spec.comparable
    features = InceptionFeatureExtractor(spec).features([np.zeros((64, 64, 3), np.uint8), np.full((32, 48, 3), 200,
                                                                                                   np.uint8)])
    assert features.shape == (2, 2048) and np.isfinite(features).all() and not np.allclose(features[0], features[1])
    with pytest.raises(ValueError, match="is not the pytorch-fid Inception weights"):  # the paper's check refuses it
        InceptionFeatureExtractor(InceptionSpec(weights=config.eval_fid.inception_weights))
    damaged = tmp_path / "damaged.pth"
    shutil.copyfile(config.eval_fid.inception_weights, damaged)
    with open(damaged, "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(ValueError, match="is not the expected Inception weights file"):
        InceptionFeatureExtractor(InceptionSpec(weights=str(damaged), weights_sha256=INCEPTION_SHA256))


@pytest.mark.parametrize("model, dtype", [("sd21", "float32"), ("sd35_medium", "bfloat16")])
def test_text_to_image_pipelines_generate_from_captions(config, paper_mini_assets, model, dtype):
    from vlv.eval.text_to_image import TextToImageSpec, build_text_to_image, generate_from_captions

    weights = str(paper_mini_assets.sd21) if model == "sd21" else config.eval_fid.t2i_weights  # paper_mini: sd35
    spec = TextToImageSpec(model=model, weights=weights, image_size=64, num_steps=2, dtype=dtype)
    pipeline = build_text_to_image(spec)
    assert next(pipeline.transformer.parameters() if model == "sd35_medium" else
                pipeline.unet.parameters()).dtype == getattr(torch, dtype)
    images = generate_from_captions(pipeline, ["a cat on a mat", "a red motorcycle"], spec=spec, guidance_scale=2.0,
                                    seed=0)
    again = generate_from_captions(pipeline, ["a cat on a mat", "a red motorcycle"], spec=spec, guidance_scale=2.0,
                                   seed=0)
    assert [image.shape for image in images] == [(64, 64, 3)] * 2 and images[0].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(images, again))  # seeded
    assert not np.array_equal(images[0], images[1])


def test_vqa_llm_loads_the_qwen_folder_in_bf16_and_answers(config):
    from vlv.eval.vqa_llm import build_llm, generate_answers

    spec = config.eval_vqa.llm_spec()
    model, tokenizer = build_llm(spec)
    assert spec.kind == "pretrained" and next(model.parameters()).dtype == torch.bfloat16
    answers = generate_answers(model, tokenizer, ["Description: a cat.\nQuestion: What animal?\nShort answer:",
                                                  "Question: How many?\nShort answer:"], max_new_tokens=4,
                               batch_size=2)
    assert len(answers) == 2 and all(isinstance(answer, str) for answer in answers)


def test_laion_metadata_has_the_real_columns_and_the_gemini_keys_are_img2dataset_keys(config, paper_mini_assets):
    from vlv.data.laion import CANONICAL_COLUMNS
    from vlv.paper_mini.laion_data import img2dataset_key

    table = pq.read_table(config.prepare_metadata.input_uri)
    assert table.column_names == list(CANONICAL_COLUMNS)
    assert all(url.startswith("http://tiny-site.invalid/")
               for url in table.column("URL").to_pylist())
    keys = [json.loads(line.lstrip("\ufeff"))["key"] for line in open(config.ingest_captions.source, encoding="utf-8")
            if line.strip().startswith(("{", "\ufeff{")) and line.rstrip().endswith("}")]
    assert img2dataset_key(0, 8) == "000000" and img2dataset_key(9, 8) == "000011"  # shard 1, sample 1
    assert sum(re.fullmatch(r"\d{6}", key) is not None for key in keys) >= 20
