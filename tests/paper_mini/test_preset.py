"""paper_mini = paper with only sizes, step counts, worker counts, CPU resources and paths changed."""

from __future__ import annotations

from typing import Any

import pytest

from vlv.config_tree import to_dict
from vlv.models.arch_configs import read_arch_json
from vlv.paper_mini.layout import ASSETS_DIR_ENV
from vlv.presets import paper, paper_mini

SIZE, STEPS, WORKERS, CPU, PATH = "size", "step count", "workers", "runs on CPU", "path"
# Every setting paper_mini changes, and why. Anything else differing from `paper` fails the test below.
CHANGED = {
    "preset": PATH,
    "prepare_metadata.input_uri": PATH, "prepare_metadata.serve_folder": PATH,
    "download.samples_per_shard": SIZE, "download.processes_count": WORKERS, "download.thread_count": WORKERS,
    "aesthetic_filter.clip_model": PATH, "aesthetic_filter.clip_pretrained": PATH,
    "aesthetic_filter.predictor_weights": PATH, "aesthetic_filter.num_actors": WORKERS,
    "aesthetic_filter.cpus_per_actor": CPU, "aesthetic_filter.gpus_per_actor": CPU,
    "ingest_captions.source": PATH,
    "train_stage1.model.florence_arch": SIZE, "train_stage1.model.florence_weights": PATH,
    "train_stage1.model.sd_arch": SIZE, "train_stage1.model.sd_weights": PATH,
    "train_stage1.shuffle_buffer": SIZE, "train_stage1.grid_sampling_steps": STEPS,
    "train_stage2.model.llm_arch": SIZE, "train_stage2.model.llm_weights": PATH,
    "train_stage2.model.max_new_tokens": SIZE, "train_stage2.shuffle_buffer": SIZE,
    "train_stage2.sample_captions": SIZE,
    **{f"{stage}.{name}": kind for stage in ("train_stage1", "train_stage2") for name, kind in (
        ("deepspeed.micro_batch_per_worker", SIZE), ("deepspeed.global_batch", SIZE), ("loop.total_steps", STEPS),
        ("loop.checkpoint_every", STEPS), ("loop.log_every", STEPS), ("ray_train.num_workers", WORKERS),
        ("ray_train.use_gpu", CPU))},
    "caption_eval.images_dir": PATH, "caption_eval.captions_json": PATH, "caption_eval.num_actors": WORKERS,
    "caption_eval.cpus_per_actor": CPU, "caption_eval.gpus_per_actor": CPU,
    **{f"caption_eval.vqa.{i}.{name}": PATH for i in (0, 1) for name in (
        "questions_json", "annotations_json", "images_dir", "exemplar_questions_json", "exemplar_annotations_json",
        "exemplar_images_dir")},
    "eval_fid.inception_weights": PATH, "eval_fid.inception_sha256": PATH, "eval_fid.recon_num_steps": STEPS,
    "eval_fid.t2i_weights": PATH, "eval_fid.t2i_num_steps": STEPS, "eval_fid.t2i_image_size": SIZE,
    "eval_fid.num_workers": WORKERS, "eval_fid.cpus_per_worker": CPU,
    "eval_fid.gpus_per_worker": CPU,
    "eval_vqa.llm_path": PATH, "eval_vqa.num_workers": WORKERS, "eval_vqa.cpus_per_worker": CPU,
    "eval_vqa.gpus_per_worker": CPU,
    "eval_arena.num_images": SIZE, "eval_arena.generate_tiny": PATH,  # no judge offline: generated scores
}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def test_paper_mini_changes_only_the_listed_settings():
    base, mini = _flat(to_dict(paper())), _flat(to_dict(paper_mini()))
    assert base.keys() == mini.keys()
    changed = {key for key in base if base[key] != mini[key]}
    assert changed == set(CHANGED), f"unlisted: {sorted(changed - set(CHANGED))}, unchanged: " \
                                    f"{sorted(set(CHANGED) - changed)}"


def test_paper_settings_the_miniature_keeps():
    base, mini = paper(), paper_mini()
    model = mini.train_stage1.model
    assert (model.image_size, model.florence_image_size, model.num_queries) == (384, 768, 77)
    assert mini.download.image_size == 384 and mini.train_stage2.model.num_beams == 4
    assert mini.eval_fid.cfg_scales == base.eval_fid.cfg_scales == [1.0, 2.0, 3.0, 4.0]
    assert mini.eval_vqa.shots == [0, 4, 32] and [b.name for b in mini.caption_eval.vqa] == ["vqav2", "okvqa"]
    assert mini.prepare_metadata.metadata_filter() == base.prepare_metadata.metadata_filter()
    assert mini.aesthetic_filter.threshold == base.aesthetic_filter.threshold
    assert (mini.train_stage1.deepspeed.zero_stage, mini.train_stage1.deepspeed.precision) == (2, "fp32")
    assert (mini.train_stage2.deepspeed.zero_stage, mini.train_stage2.deepspeed.precision) == (2, "bf16")
    assert mini.train_stage1.deepspeed.optimizer == base.train_stage1.deepspeed.optimizer
    assert mini.train_stage2.deepspeed.schedule.kind == base.train_stage2.deepspeed.schedule.kind


def test_assets_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(ASSETS_DIR_ENV, str(tmp_path / "mini"))
    config = paper_mini()
    assert config.train_stage2.model.llm_weights == str(tmp_path / "mini" / "models" / "qwen2.5_3b_mini")


@pytest.mark.parametrize("mini, paper_name, sizes", [
    ("florence2_large_mini", "florence2_large", {
        "image_token_id", "text_config.vocab_size", "text_config.d_model", "text_config.encoder_layers",
        "text_config.decoder_layers", "text_config.encoder_attention_heads", "text_config.decoder_attention_heads",
        "text_config.encoder_ffn_dim", "text_config.decoder_ffn_dim", "vision_config.depths",
        "vision_config.embed_dim", "vision_config.num_heads", "vision_config.num_groups",
        "vision_config.projection_dim"}),
    ("qwen2.5_3b_mini", "qwen2.5_3b", {
        "bos_token_id", "eos_token_id", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "max_window_layers"}),
    ("sd21_base_mini/unet", "sd21_base/unet", {
        "block_out_channels", "attention_head_dim", "cross_attention_dim", "norm_num_groups"}),
    ("sd21_base_mini/vae", "sd21_base/vae", {"block_out_channels", "norm_num_groups"}),
    ("sd21_base_mini/text_encoder", "sd21_base/text_encoder", {
        "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "projection_dim"}),
    ("sd21_base_mini/scheduler", "sd21_base/scheduler", set()),
])
def test_miniature_architectures_differ_from_the_paper_ones_only_in_sizes(mini, paper_name, sizes):
    ours, theirs = _flat(read_arch_json(mini)), _flat(read_arch_json(paper_name))
    assert ours.keys() == theirs.keys()
    assert {key for key in ours if ours[key] != theirs[key]} == sizes
