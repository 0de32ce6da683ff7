"""Cache keys, planning flags and atomic publishing, without Ray."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vlv.engine.manifest import Manifest, list_files, verify_files
from vlv.engine.plan import describe_plan, downstream_of, make_plan, step_key, upstream_of
from vlv.engine.store import RunStore, StoreLockedError
from vlv.testing.toy_steps import ToyConfig, ToySection, toy_steps


def _publish(store: RunStore, step: str, key: str, content: str = "x") -> None:
    staging = store.prepare_staging(step, key, keep_existing=False)
    (staging / "value.txt").write_text(content)
    store.publish(staging, Manifest(step, key, "1", {}, {}, list_files(staging), {}))


def test_key_changes_with_each_ingredient():
    base = step_key("a", "1", {"x": 1}, {"up": "k"})
    assert base == step_key("a", "1", {"x": 1}, {"up": "k"})
    assert len({base, step_key("b", "1", {"x": 1}, {"up": "k"}), step_key("a", "2", {"x": 1}, {"up": "k"}),
                step_key("a", "1", {"x": 2}, {"up": "k"}), step_key("a", "1", {"x": 1}, {"up": "k2"})}) == 5


def test_section_change_invalidates_step_and_downstream_only(tmp_path):
    store = RunStore(str(tmp_path))
    before = {p.name: p.key for p in make_plan(toy_steps(), ToyConfig(), store)}
    changed = ToyConfig(beta=ToySection(value=2))
    after = {p.name: p.key for p in make_plan(toy_steps(), changed, store)}
    assert before["alpha"] == after["alpha"]
    assert before["beta"] != after["beta"] and before["gamma"] != after["gamma"]


def test_the_plan_carries_the_typed_section_and_the_declared_work(tmp_path):
    """--dry-run prints each running step's declared task and pools: the same `Step.work` the run uses."""
    from vlv.config import load_config
    from vlv.pipeline import pipeline_steps

    tiny = load_config("tiny")
    plan = {p.name: p for p in make_plan(pipeline_steps(), tiny, RunStore(str(tmp_path)))}
    stage1 = plan["train_stage1"]
    assert stage1.section is tiny.train_stage1 and stage1.settings["ray_train"]["num_workers"] == 2
    assert stage1.work.pools[0].kind == "train_workers" and stage1.work.gpus == 0
    text = describe_plan(list(plan.values()))
    assert "runs on: task 0 CPU; 2 x Ray Train worker (1 CPU each)" in text
    assert "runs on: task 0.5 CPU; 1 x aesthetic scoring actor (1 CPU each)" in text
    four = load_config("tiny", overrides={"aesthetic_filter.num_actors": 4})
    planned = {p.name: p for p in make_plan(pipeline_steps(), four, RunStore(str(tmp_path)))}
    assert planned["aesthetic_filter"].work.pools[0].count == 4


def test_plan_actions_for_flags(tmp_path):
    store = RunStore(str(tmp_path))
    plan = make_plan(toy_steps(), ToyConfig(), store)
    assert [p.action for p in plan] == ["run", "run", "run"]
    for p in plan:
        _publish(store, p.name, p.key)
    assert [p.action for p in make_plan(toy_steps(), ToyConfig(), store)] == ["cached"] * 3
    assert [p.action for p in make_plan(toy_steps(), ToyConfig(), store, force=["beta"])] == \
        ["cached", "run", "cached"]
    assert [p.action for p in make_plan(toy_steps(), ToyConfig(), store, from_step="beta")] == \
        ["cached", "run", "run"]
    assert [p.action for p in make_plan(toy_steps(), ToyConfig(), store, only=["gamma"])] == \
        ["skip", "skip", "cached"]
    assert downstream_of(toy_steps(), "alpha") == ["alpha", "beta", "gamma"]
    assert upstream_of(toy_steps(), "gamma") == ["alpha", "beta"] and upstream_of(toy_steps(), "alpha") == []


def test_steps_flag_with_missing_input_names_the_producer(tmp_path):
    with pytest.raises(ValueError, match=r"needs the output of step 'beta'.*--steps beta"):
        make_plan(toy_steps(), ToyConfig(), RunStore(str(tmp_path)), only=["gamma"])


@pytest.mark.parametrize("kwargs,flag", [({"only": ["nope"]}, "--steps"), ({"force": ["nope"]}, "--force"),
                                         ({"from_step": "nope"}, "--from")])
def test_unknown_step_lists_valid_steps(tmp_path, kwargs, flag):
    with pytest.raises(ValueError, match=rf"{flag}: unknown step 'nope'; valid steps: alpha, beta, gamma"):
        make_plan(toy_steps(), ToyConfig(), RunStore(str(tmp_path)), **kwargs)


def test_publish_is_all_or_nothing_and_manifest_lists_checksums(tmp_path):
    store = RunStore(str(tmp_path))
    staging = store.prepare_staging("alpha", "k1", keep_existing=False)
    (staging / "sub").mkdir()
    (staging / "sub" / "a.bin").write_bytes(b"abc")
    assert not store.is_published("alpha", "k1")  # a staging folder is never a result
    manifest = Manifest("alpha", "k1", "1", {}, {}, list_files(staging), {"n": 3.0})
    store.publish(staging, manifest)
    assert store.is_published("alpha", "k1") and not staging.exists()
    entry = store.read_manifest("alpha", "k1").files[0]
    assert entry.path == "sub/a.bin" and entry.size == 3
    assert entry.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    out = Path(store.output_uri("alpha", "k1"))
    assert verify_files(out, manifest) == []
    (out / "sub" / "a.bin").write_bytes(b"abd")
    assert "sha256 differs" in verify_files(out, manifest)[0]


def test_forced_republish_replaces_output(tmp_path):
    store = RunStore(str(tmp_path))
    _publish(store, "alpha", "k", "old")
    _publish(store, "alpha", "k", "new")
    assert (Path(store.output_uri("alpha", "k")) / "value.txt").read_text() == "new"
    assert [p.name for p in Path(store.output_uri("alpha", "k")).parent.iterdir()] == ["k"]


def test_staging_is_kept_only_for_resumable_steps(tmp_path):
    store = RunStore(str(tmp_path))
    staging = store.prepare_staging("alpha", "k", keep_existing=False)
    (staging / "shard0").write_text("done")
    assert (store.prepare_staging("alpha", "k", keep_existing=True) / "shard0").exists()
    assert not (store.prepare_staging("alpha", "k", keep_existing=False) / "shard0").exists()


def test_lock_refuses_a_second_holder_and_takes_over_stale_locks(tmp_path):
    store = RunStore(str(tmp_path))
    with store.lock("alpha", "k", owner="run-1"):
        with pytest.raises(StoreLockedError, match="being produced by run run-1"):
            with store.lock("alpha", "k", owner="run-2"):
                pass
    lock = tmp_path / ".locks" / "alpha-k.lock"
    lock.write_text(json.dumps({"owner": "dead", "pid": 2 ** 22 + 12345, "host": __import__("socket").gethostname()}))
    with store.lock("alpha", "k", owner="run-3"):
        assert json.loads(lock.read_text())["owner"] == "run-3"
    assert not lock.exists()


def test_manifest_round_trips_json():
    manifest = Manifest("a", "k", "1", {"x": 1}, {"up": "u"}, (), {"m": 1.5}, ("t.csv",))
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert dataclasses.asdict(Manifest.from_json(manifest.to_json()))["artifacts"] == ("t.csv",)


def test_a_step_waiting_for_an_outside_input_is_skipped_and_its_optional_reader_runs(tmp_path):
    """The paper preset's arena waits for a judge's Batch API output; the report runs without it; naming the arena
    (--steps/--force) plans it, so its preflight says what is missing; with the output given it runs."""
    from vlv.config import load_config
    from vlv.pipeline import pipeline_steps

    store = RunStore(str(tmp_path))
    plan = {p.name: p for p in make_plan(pipeline_steps(), load_config("paper"), store)}
    assert plan["eval_arena"].action == "skip" and plan["eval_arena"].waiting
    assert plan["eval_arena"].reason.startswith("waiting for the judge's output (eval_arena.judge_output)")
    assert plan["report"].action == "run" and "eval_arena" in plan["report"].upstream_keys
    assert make_plan(pipeline_steps(), load_config("paper"), store, force=["eval_arena"])[9].action == "run"
    given = load_config("paper", overrides={"eval_arena.judge_output": "/data/arena_responses.jsonl"})
    planned = {p.name: p for p in make_plan(pipeline_steps(), given, store)}
    assert planned["eval_arena"].action == "run" and not planned["eval_arena"].waiting
    assert planned["report"].key != plan["report"].key  # the report with the arena is another output
    with pytest.raises(ValueError, match="needs the output of step 'prepare_metadata'"):
        make_plan(pipeline_steps(), load_config("paper"), store, only=["report"])  # required upstreams still count
