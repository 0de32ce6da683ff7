"""The evaluation steps in the pipeline: order, upstream wiring, presets and their preflight."""

from __future__ import annotations

import pytest

from vlv.pipeline import pipeline_steps, step_by_name, step_names
from vlv.presets import paper, tiny

EVAL_STEPS = ["caption_eval", "eval_fid", "eval_vqa", "eval_arena", "report"]


def test_eval_steps_follow_training_and_report_reads_every_other_step():
    names = step_names()
    assert names[names.index("train_stage2") + 1:] == EVAL_STEPS
    for step in pipeline_steps():
        assert all(names.index(up) < names.index(step.name) for up in step.upstream), step.name
    assert set(step_by_name("report").upstream) == set(names) - {"report"}


def test_tiny_preset_passes_preflight_and_keeps_evaluation_small():
    config = tiny()
    for name in EVAL_STEPS:
        step_by_name(name).preflight(getattr(config, name))
    assert config.caption_eval.tiny_sets and [b.name for b in config.caption_eval.vqa] == ["tiny"]
    assert config.eval_fid.inception_random_seed is not None and config.eval_fid.t2i_model == "tiny"
    assert config.eval_fid.cfg_scales == [1.0, 2.0] and config.eval_fid.recon_num_steps == 2
    # the same reconstruction code as paper: DDPM over a list of CFG values, only fewer steps and values
    assert config.eval_fid.recon_scheduler == "ddpm" and config.eval_fid.recon_cfg_scales == [1.0, 2.0]
    assert config.eval_vqa.llm == "tiny-random" and max(config.eval_vqa.shots) <= 11  # 11 tiny exemplars


@pytest.mark.parametrize("name, message", [
    ("caption_eval", "caption_eval.images_dir"),
    ("eval_fid", "FID Inception weights"),
    ("eval_vqa", "eval_vqa.llm_path is not set"),
    ("eval_arena", "eval_arena.judge_output is empty: write the judge requests with `vlv arena request"),
])
def test_paper_preset_preflight_names_what_is_missing(name, message, monkeypatch, tmp_path):
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path))  # no Inception weights in the hub cache
    config = paper()
    assert config.eval_fid.cfg_scales == [1.0, 2.0, 3.0, 4.0] and config.eval_vqa.shots == [0, 4, 32]
    fid = config.eval_fid  # the official inference: DDPM, 50 steps, CFG 2.0 headline; the paper's CFG 1-4
    assert (fid.recon_scheduler, fid.recon_num_steps, fid.recon_cfg_scales, fid.recon_headline_scale()) == (
        "ddpm", 50, [1.0, 2.0, 3.0, 4.0], 2.0)
    assert (config.caption_eval.max_images, config.caption_eval.subset) == (30_000, "random")
    assert config.eval_vqa.answer_processing == "official"
    with pytest.raises(ValueError, match=message):
        step_by_name(name).preflight(getattr(config, name))
