"""Grid parsing, up-front validation and the sweep id (no Ray, no store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlv.config import load_config
from vlv.config_tree import output_settings
from vlv.engine.plan import make_plan
from vlv.engine.store import RunStore
from vlv.pipeline import pipeline_steps
from vlv.sweep.grid import SweepSpec, load_grid_file, parse_grid_flag, prepare_sweep

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"


def _prepare(preset: str, grids: list[str], sets: dict | None = None, files: tuple[Path, ...] = ()):
    axes = [axis for path in files for axis in load_grid_file(path)[0]] + [parse_grid_flag(g) for g in grids]
    spec = SweepSpec(preset, None, dict(sets or {}), tuple(axes))
    return prepare_sweep(spec, lambda overrides: load_config(preset, None, overrides))


def test_points_are_every_combination_with_typed_configs():
    sweep = _prepare("tiny", ["eval_arena.seed=0,1,2", "eval_vqa.shots=[[0], [0, 4]]"])
    assert [p.label for p in sweep.points[:2]] == ["eval_arena.seed=0, eval_vqa.shots=[0]",
                                                    "eval_arena.seed=0, eval_vqa.shots=[0, 4]"]
    assert len(sweep.points) == 6
    assert [(c.eval_arena.seed, list(c.eval_vqa.shots)) for c in sweep.configs][-1] == (2, [0, 4])


def test_sweep_id_is_deterministic_and_follows_the_grid_and_base_config():
    first = _prepare("tiny", ["eval_arena.seed=0,1"]).sweep_id
    assert first == _prepare("tiny", ["eval_arena.seed=0,1"]).sweep_id
    assert first.startswith("tiny-seed-")
    assert first != _prepare("tiny", ["eval_arena.seed=0,2"]).sweep_id
    assert first != _prepare("tiny", ["eval_arena.seed=0,1"], {"eval_vqa.max_new_tokens": "4"}).sweep_id


def test_unknown_grid_key_is_refused_naming_the_key_and_the_valid_ones():
    with pytest.raises(ValueError) as err:
        _prepare("tiny", ["eval_arena.sed=0,1"])
    message = str(err.value)
    assert message.startswith("--grid eval_arena.sed=0:")
    assert "unknown config key 'eval_arena.sed'" in message and "seed" in message and "nothing was run" in message


def test_a_value_the_config_refuses_names_the_value():
    with pytest.raises(ValueError, match=r"--grid eval_arena.num_images=0: .*num_images must be >= 1"):
        _prepare("tiny", ["eval_arena.num_images=6,0"])
    with pytest.raises(ValueError, match=r"--grid eval_arena.seed=x: .*expects int"):
        _prepare("tiny", ["eval_arena.seed=1,x"])


def test_ambiguous_grids_are_refused():
    with pytest.raises(ValueError, match="both in --set and on grid axis"):
        _prepare("tiny", ["eval_arena.seed=0,1"], {"eval_arena.seed": "3"})
    with pytest.raises(ValueError, match="given twice"):
        _prepare("tiny", ["eval_arena.seed=0,1", "eval_arena.seed=2"])
    with pytest.raises(ValueError, match="lists the value 1 twice"):
        _prepare("tiny", ["eval_arena.seed=1,1"])
    with pytest.raises(ValueError, match="give the same configuration"):  # a port changes no step's output
        _prepare("tiny", ["prepare_metadata.tiny_port=0,40123"])
    with pytest.raises(ValueError, match="expects key=v1,v2"):
        parse_grid_flag("eval_arena.seed")


@pytest.mark.parametrize("name, key, expected", [
    ("paper_queries.yaml", "train_stage1.model.num_queries", [16, 32, 77]),
    ("paper_unfreeze.yaml", "train_stage2.model.trainable", ["mlp", "mlp+llm", "mlp+llm+encoder"]),
    ("paper_decoder.yaml", "train_stage2.model.llm_arch", ["qwen2.5_0.5b", "qwen2.5_1.5b", "qwen2.5_3b"]),
    ("paper_data.yaml", "train_stage1.max_images", [6_000_000, 18_000_000, 40_000_000]),
])
def test_shipped_paper_sweep_files_validate_against_the_paper_preset(name, key, expected):
    sweep = _prepare("paper", [], files=(SWEEPS / name,))
    section, *rest = key.split(".")
    values = []
    for config in sweep.configs:
        node = getattr(config, section)
        for part in rest:
            node = getattr(node, part)
        values.append(node)
    assert values == expected
    if name == "paper_decoder.yaml":  # the weights travel with the architecture
        assert [c.train_stage2.model.llm_weights for c in sweep.configs] == \
            ["Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-3B"]
        assert [p.label for p in sweep.points] == [f"decoder={v}" for v in expected]


def test_the_data_scale_sweep_trains_stage1_per_point_on_shared_data_steps(tmp_path):
    sweep = _prepare("paper", [], files=(SWEEPS / "paper_data.yaml",))
    assert [p.label for p in sweep.points] == [f"train_stage1.max_images={n}" for n in (6000000, 18000000, 40000000)]
    store = RunStore(str(tmp_path / "store"))
    uncapped = {p.name: p.key for p in make_plan(pipeline_steps(), load_config("paper", None, {}), store)}
    plans = [{p.name: p.key for p in make_plan(pipeline_steps(), config, store)} for config in sweep.configs]
    for step in ("prepare_metadata", "download", "aesthetic_filter", "ingest_captions"):
        assert {plan[step] for plan in plans} == {uncapped[step]}, step  # the data steps run once, shared
    for step in ("train_stage1", "train_stage2", "eval_fid"):
        keys = [plan[step] for plan in plans] + [uncapped[step]]
        assert len(set(keys)) == 4, step  # each cap trains its own stage 1 (and what follows), none the uncapped
    capped = sweep.configs[0].train_stage1
    assert output_settings(capped)["max_images"] == 6_000_000
    assert "max_images" not in output_settings(load_config("paper", None, {}).train_stage1)  # keys as before


def test_a_sweep_file_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("grid:\n  eval_arena.seed: [0, 1]\ngird: {}\n")
    with pytest.raises(ValueError, match="unknown key 'gird'; valid keys: description, grid"):
        load_grid_file(path)
