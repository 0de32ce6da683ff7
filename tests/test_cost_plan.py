"""`vlv plan`: the numbers follow from the paper's figures and the stated assumptions, and add up."""

from __future__ import annotations

import pytest

from vlv.cli import main
from vlv.config import load_config
from vlv.cost_plan import Workload, format_cost_plan, gpu_type_by_name, make_cost_plan

RECIPE = ["prepare_metadata", "download", "aesthetic_filter", "ingest_captions", "train_stage1", "train_stage2",
          "caption_eval", "eval_fid", "eval_vqa", "report"]


@pytest.fixture(scope="module")
def paper():
    return load_config("paper")


def by_step(plan):
    return {s.step: s for s in plan.steps}


def test_lists_every_step_with_work_to_price_in_pipeline_order(paper):
    from vlv.pipeline import step_names

    plan = make_cost_plan(paper)
    assert [s.step for s in plan.steps] == RECIPE
    assert [name for name in step_names() if name not in RECIPE] == ["eval_arena"]  # its judge runs outside


def test_resources_are_the_steps_declarations(paper):
    """Each row's resources, GPUs and CPUs come from `Step.work`: change a pool in the config, the row follows."""
    steps = by_step(make_cost_plan(paper))
    assert steps["train_stage1"].resources == "8 train workers x 1 CPU, 1 GPU"
    assert steps["aesthetic_filter"].resources == "0.5 CPU task + 8 actors x 4 CPU, 1 GPU"
    assert steps["download"].resources == "1 CPU task + 16 processes x 1 CPU"
    assert steps["eval_fid"].resources == "8 tasks x 4 CPU, 1 GPU + 8 tasks x 1 CPU"
    fewer = load_config("paper", overrides={"caption_eval.num_actors": 2, "train_stage1.ray_train.num_workers": 4})
    changed = by_step(make_cost_plan(fewer, gpu_type="RTX6000-Ada"))
    base = by_step(make_cost_plan(paper, gpu_type="RTX6000-Ada"))
    assert changed["caption_eval"].resources == "2 actors x 4 CPU, 1 GPU"
    assert changed["caption_eval"].wall_hours == pytest.approx(base["caption_eval"].wall_hours * 4)
    assert changed["train_stage1"].wall_hours == pytest.approx(base["train_stage1"].wall_hours * 2)
    assert changed["train_stage1"].gpu_hours == pytest.approx(base["train_stage1"].gpu_hours)


def test_stage1_on_the_reference_gpu_is_the_papers_770_gpu_hours(paper):
    steps = by_step(make_cost_plan(paper, gpu_type="RTX6000-Ada", gpus=8, price_per_gpu_hour=1.0))
    stage1 = steps["train_stage1"]
    assert stage1.gpu_hours == pytest.approx(770.0)
    assert stage1.wall_hours == pytest.approx(770.0 / 8)  # about 4 days, as in the paper
    assert stage1.cost_usd == pytest.approx(770.0)
    # stage 2: 100K x 64 samples at stage 1's seconds per sample (770 h / 200K x 512), times the assumed ratio
    w = Workload()
    expected = 770.0 / (200_000 * 512) * (100_000 * 64) * w.stage2_relative_cost_per_sample
    assert steps["train_stage2"].gpu_hours == pytest.approx(expected)


def test_training_follows_the_config(paper):
    base = by_step(make_cost_plan(paper, gpu_type="RTX6000-Ada"))
    assert make_cost_plan(paper).gpus == 8  # the paper config's Ray Train workers
    shorter = load_config("paper", overrides={"train_stage1.loop.total_steps": 100_000,
                                              "train_stage2.deepspeed.global_batch": 128})
    steps = by_step(make_cost_plan(shorter, gpu_type="RTX6000-Ada"))
    assert steps["train_stage1"].gpu_hours == pytest.approx(base["train_stage1"].gpu_hours / 2)
    assert steps["train_stage2"].gpu_hours == pytest.approx(base["train_stage2"].gpu_hours * 2)
    assert "100K steps x 512" in steps["train_stage1"].work and "fp32" in steps["train_stage1"].work
    assert "bf16" in steps["train_stage2"].work


def test_only_the_paper_preset_is_planned():
    with pytest.raises(ValueError, match="--preset paper"):
        make_cost_plan(load_config("tiny"))


def test_gpu_speed_price_and_count_scale_as_stated(paper):
    base = by_step(make_cost_plan(paper, gpu_type="RTX6000-Ada", gpus=8, price_per_gpu_hour=2.0))
    h100 = by_step(make_cost_plan(paper, gpu_type="h100", gpus=16, price_per_gpu_hour=2.0))
    assert h100["train_stage1"].gpu_hours == pytest.approx(base["train_stage1"].gpu_hours / 3.0)
    assert h100["train_stage1"].wall_hours == pytest.approx(h100["train_stage1"].gpu_hours / 16)
    assert h100["train_stage1"].cost_usd == pytest.approx(base["train_stage1"].cost_usd / 3.0)
    assert h100["download"].cpu_hours == base["download"].cpu_hours  # CPU steps do not depend on the GPU


def test_totals_add_up(paper):
    plan = make_cost_plan(paper, gpu_type="A100-80GB", gpus=8, price_per_gpu_hour=4.0, price_per_cpu_hour=0.1)
    assert plan.gpu_hours == pytest.approx(sum(s.gpu_hours for s in plan.steps))
    assert plan.cost_usd == pytest.approx(plan.gpu_hours * 4.0 + plan.cpu_hours * 0.1)
    assert plan.wall_hours == pytest.approx(sum(s.wall_hours for s in plan.steps))


def test_data_steps_follow_the_config(paper):
    steps = by_step(make_cost_plan(paper))
    # img2dataset README: 1350 URLs/s on 16 processes; the paper preset runs 16 processes on 40M URLs
    assert steps["download"].wall_hours == pytest.approx(40e6 / 1350 / 3600)
    half = load_config("paper", overrides={"download.processes_count": 8})
    assert by_step(make_cost_plan(half))["download"].wall_hours == pytest.approx(2 * 40e6 / 1350 / 3600)
    gpu_filter = load_config("paper", overrides={"aesthetic_filter.gpus_per_actor": 1.0,
                                                 "aesthetic_filter.num_actors": 4})
    scored = by_step(make_cost_plan(gpu_filter, gpu_type="L40S"))["aesthetic_filter"]
    assert scored.gpu_hours == pytest.approx(24e6 / 500 / 3600)
    assert scored.wall_hours == pytest.approx(scored.gpu_hours / 4)


def test_a_cpu_only_aesthetic_filter_is_flagged(paper):
    plan = make_cost_plan(paper)
    if paper.aesthetic_filter.gpus_per_actor == 0:
        assert any("aesthetic_filter asks for no GPU" in w for w in plan.warnings)
    cpu_only = load_config("paper", overrides={"aesthetic_filter.gpus_per_actor": 0.0})
    assert any("gpus_per_actor=1" in w for w in make_cost_plan(cpu_only).warnings)


def test_bad_flags_are_refused(paper):
    with pytest.raises(ValueError, match="known types: RTX6000-Ada, L40S"):
        gpu_type_by_name("V100")
    with pytest.raises(ValueError, match="--gpus must be > 0"):
        make_cost_plan(paper, gpus=0)
    with pytest.raises(ValueError, match="price-per-gpu-hour"):
        make_cost_plan(paper, price_per_gpu_hour=-1.0)
    assert gpu_type_by_name("a100").name == "A100-80GB"
    assert gpu_type_by_name("rtx 6000 ada").name == "RTX6000-Ada"


def test_cli_prints_the_plan(capsys):
    assert main(["plan"]) == 0  # --preset defaults to paper for `vlv plan`
    assert "preset 'paper': 8 x L40S" in capsys.readouterr().out
    assert main(["plan", "--preset", "paper", "--gpus", "16", "--gpu-type", "H100-80GB",
                 "--price-per-gpu-hour", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "16 x H100-80GB" in out and "$2.50/GPU-h" in out
    stage1 = next(line for line in out.splitlines() if line.startswith("train_stage1"))
    assert "256.7" in stage1 and "16.0" in stage1  # 770 / 3 GPU-hours, over 16 GPUs
    assert main(["plan", "--preset", "paper", "--gpu-type", "V100"]) == 2
    assert "unknown GPU type" in capsys.readouterr().err


def test_format_has_one_row_per_step_and_a_total(paper):
    text = format_cost_plan(make_cost_plan(paper))
    rows = [line.split()[0].rstrip("*") for line in text.splitlines() if line.split()
            and line.split()[0].rstrip("*") in RECIPE]
    assert rows == RECIPE
    assert any(line.startswith("total") for line in text.splitlines())
