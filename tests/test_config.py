"""Presets, config files and `--set` overrides: types checked, unknown keys refused with the choices."""

from __future__ import annotations

import json

import pytest

from vlv.config import load_config
from vlv.config_tree import parse_set_flags


def test_presets_build_and_differ():
    tiny, paper = load_config("tiny"), load_config("paper")
    assert tiny.preset == "tiny" and paper.preset == "paper"
    assert paper.download.image_size == 384 and tiny.download.image_size < 384
    assert tiny.config_hash() != paper.config_hash()


def test_set_overrides_are_parsed_to_the_field_type():
    cfg = load_config("tiny", overrides=parse_set_flags([
        "download.image_size=32", "aesthetic_filter.keep_top_quantile=0.5", "download.respect_opt_out=false",
        "prepare_metadata.max_punsafe=0.3", "prepare_metadata.column_map={\"URL\": \"url\"}"]))
    assert cfg.download.image_size == 32 and isinstance(cfg.download.image_size, int)
    assert cfg.aesthetic_filter.keep_top_quantile == 0.5
    assert cfg.download.respect_opt_out is False
    assert cfg.prepare_metadata.max_punsafe == 0.3
    assert cfg.prepare_metadata.column_map == {"URL": "url"}


def test_set_a_list_of_sections_from_json():
    cfg = load_config("tiny", overrides=parse_set_flags([
        'caption_eval.vqa=[{"name": "vqav2", "max_questions": 3}, {"name": "okvqa"}]']))
    assert [b.name for b in cfg.caption_eval.vqa] == ["vqav2", "okvqa"]
    assert cfg.caption_eval.vqa[0].max_questions == 3
    with pytest.raises(ValueError, match="unknown config key 'caption_eval.vqa.nmae'"):
        load_config("tiny", overrides=parse_set_flags(['caption_eval.vqa=[{"nmae": "x"}]']))


@pytest.mark.parametrize("item,message", [
    ("download.image_sise=3", "unknown config key 'download.image_sise'.*valid keys there: .*image_size"),
    ("nope.x=1", "unknown config key 'nope.x'.*valid keys there: .*download"),
    ("download.image_size=big", "config key 'download.image_size' expects int, got 'big'"),
    ("download.distributor=spark", "must be one of 'auto', 'multiprocessing', 'ray'"),
    ("download.respect_opt_out=maybe", "expects bool"),
    ("download.image_size=-4", "download.image_size must be > 0"),
    ("download=3", "is a section"),
])
def test_bad_overrides_fail_with_a_clear_message(item, message):
    with pytest.raises(ValueError, match=message):
        load_config("tiny", overrides=parse_set_flags([item]))


def test_overrides_are_checked_together_on_the_final_values_in_any_order():
    """The warm-up may exceed the preset's decay horizon until the horizon's own override lands."""
    warmup, horizon = "train_stage2.deepspeed.schedule.warmup_steps", "train_stage2.deepspeed.schedule.total_steps"
    for order in ([warmup, horizon], [horizon, warmup]):
        values = {warmup: "1000000", horizon: "2000000"}
        schedule = load_config("paper", overrides={key: values[key] for key in order}).train_stage2.deepspeed.schedule
        assert (schedule.warmup_steps, schedule.total_steps) == (1_000_000, 2_000_000)
    with pytest.raises(ValueError, match=r"schedule.warmup_steps \(1000000\) must be <= schedule.total_steps"):
        load_config("paper", overrides={warmup: "1000000"})


def test_overrides_leave_the_config_they_start_from_unchanged():
    from vlv.config_tree import apply_overrides, to_dict
    from vlv.presets import tiny

    base = tiny()
    before = to_dict(base)
    changed = apply_overrides(base, parse_set_flags(["train_stage1.deepspeed.optimizer.lr=0.5",
                                                     "download.image_size=32"]))
    assert changed.train_stage1.deepspeed.optimizer.lr == 0.5 and changed.download.image_size == 32
    assert to_dict(base) == before and base.train_stage1.deepspeed.optimizer.lr == 1e-3


def test_a_preset_value_is_normalised_as_a_loaded_one_would_be():
    """An int written into a float field comes out a float, as from a config file (the step keys hash the JSON of
    the settings, where 1 and 1.0 differ)."""
    from vlv.config_tree import checked
    from vlv.train.deepspeed_config import AdamWConfig, DeepSpeedConfig

    given = DeepSpeedConfig(gradient_clipping=1, optimizer=AdamWConfig(lr=1))
    assert isinstance(given.gradient_clipping, int)
    config = checked(given)
    assert isinstance(config.gradient_clipping, float) and isinstance(config.optimizer.lr, float)
    assert config.gradient_clipping == 1.0 and config.optimizer.lr == 1.0


def test_endpoint_and_arena_settings_from_set_flags(tmp_path):
    cfg = load_config("paper", overrides=parse_set_flags([
        "eval_vqa.llm=endpoint", "eval_vqa.endpoint_url=https://api.deepseek.com/v1",
        "eval_vqa.endpoint_model=deepseek-chat", "eval_vqa.endpoint_api_key_env=DEEPSEEK_API_KEY",
        "eval_vqa.endpoint_concurrency=16",
        'eval_arena.other_captioners=[{"name": "gpt4o", "path": "/data/gpt4o.jsonl"}]',
        "eval_arena.judge_output=/data/judge/*.jsonl"]))
    assert cfg.eval_vqa.chat_endpoint().url == "https://api.deepseek.com/v1/chat/completions"
    assert cfg.eval_vqa.endpoint_concurrency == 16 and cfg.eval_vqa.chat_endpoint().max_tokens == 10
    assert [(c.name, c.path) for c in cfg.eval_arena.other_captioners] == [("gpt4o", "/data/gpt4o.jsonl")]
    assert cfg.eval_arena.num_images == 200 and cfg.eval_arena.bootstrap_resamples == 10_000
    with pytest.raises(ValueError, match="eval_vqa.llm' must be one of 'pretrained', 'tiny-random', 'endpoint'"):
        load_config("tiny", overrides=parse_set_flags(["eval_vqa.llm=deepseek"]))
    with pytest.raises(ValueError, match="eval_vqa.endpoint_api_key_env must be the NAME of an environment variable"):
        load_config("paper", overrides=parse_set_flags(["eval_vqa.llm=endpoint",
                                                        "eval_vqa.endpoint_api_key_env=sk-0123456789abcdef"]))


def test_set_without_equals_is_refused():
    with pytest.raises(ValueError, match="--set expects key=value"):
        parse_set_flags(["download.image_size"])


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'; valid presets: tiny, paper"):
        load_config("huge")


def test_config_files_yaml_json_toml(tmp_path):
    (tmp_path / "c.yaml").write_text("download:\n  image_size: 48\n")
    (tmp_path / "c.json").write_text(json.dumps({"download": {"image_size": 40}}))
    (tmp_path / "c.toml").write_text("[download]\nimage_size = 36\n")
    assert load_config("tiny", str(tmp_path / "c.yaml")).download.image_size == 48
    assert load_config("tiny", str(tmp_path / "c.json")).download.image_size == 40
    assert load_config("tiny", str(tmp_path / "c.toml")).download.image_size == 36
    # --set wins over the file
    assert load_config("tiny", str(tmp_path / "c.yaml"), {"download.image_size": "24"}).download.image_size == 24


def test_config_file_type_errors_and_missing_file(tmp_path):
    (tmp_path / "bad.yaml").write_text("download:\n  image_size: forty\n")
    with pytest.raises(ValueError, match="download.image_size' expects int"):
        load_config("tiny", str(tmp_path / "bad.yaml"))
    with pytest.raises(ValueError, match="does not exist"):
        load_config("tiny", str(tmp_path / "missing.yaml"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config("tiny", str(tmp_path / "broken.json"))


def test_full_run_help_lists_every_step_and_preset(capsys):
    import pytest

    from pipelines import full_run
    from vlv.pipeline import step_names
    from vlv.presets import PRESETS

    with pytest.raises(SystemExit) as exited:
        full_run.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name} " in out for name in step_names()), out
    assert all(f"\n  {name} " in out for name in PRESETS), out
