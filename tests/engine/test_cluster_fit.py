"""Preflight against the cluster: declared workers that no node can hold are refused before any step runs."""

from __future__ import annotations

import pytest

from vlv.engine.cluster import ClusterShape, NodeShape, fit_problems, missing_paths_on_nodes
from vlv.engine.step import Resources, StepWork, WorkerPool

ONE_CPU_NODES = ClusterShape(nodes=(NodeShape("node a", 1, 0), NodeShape("node b", 1, 0)))


def test_a_task_larger_than_any_node_is_named_with_the_largest_node():
    problems = fit_problems({"ingest_captions": StepWork(Resources(num_cpus=2))}, ONE_CPU_NODES)
    assert problems == ["step 'ingest_captions' asks for its step task: 2 CPU and 0 GPU per worker, but the "
                        "largest node is node a (1 CPU, 0 GPU)"]


def test_gpu_actors_on_a_cpu_cluster_fail_and_fit_once_an_autoscaler_offers_gpu_nodes():
    actors = WorkerPool("aesthetic scoring actor", "actors", 8, 4.0, 1.0)
    demand = {"aesthetic_filter": StepWork(Resources(num_cpus=0.5), (actors,))}
    assert "8 x aesthetic scoring actor (4 CPU, 1 GPU each)" in fit_problems(demand, ONE_CPU_NODES)[0]
    gpu_type = ClusterShape(nodes=ONE_CPU_NODES.nodes, node_types=(NodeShape("node type gpu", 48, 8, max_count=2),))
    assert fit_problems(demand, gpu_type) == []


def test_a_gang_of_training_workers_must_fit_at_once():
    workers = WorkerPool("Ray Train worker", "train_workers", 3, 1.0, gang=True)
    problems = fit_problems({"train_stage1": StepWork(Resources(num_cpus=0), (workers,))}, ONE_CPU_NODES)
    assert len(problems) == 1 and "placed at once" in problems[0] and "at most 2 such workers" in problems[0]
    two = WorkerPool("Ray Train worker", "train_workers", 2, 1.0, gang=True)
    assert fit_problems({"train_stage1": StepWork(Resources(num_cpus=0), (two,))}, ONE_CPU_NODES) == []


def test_process_pools_run_inside_the_step_task_and_are_not_placed():
    processes = WorkerPool("img2dataset process", "processes", 16, 1.0)
    assert fit_problems({"download": StepWork(Resources(num_cpus=1), (processes,))}, ONE_CPU_NODES) == []
    as_tasks = WorkerPool("img2dataset process", "tasks", 16, 2.0)
    assert "16 x img2dataset process (2 CPU each)" in fit_problems({"download": StepWork(Resources(), (as_tasks,))},
                                                                   ONE_CPU_NODES)[0]


def test_the_declared_pools_of_the_paper_preset_are_what_the_preflight_checks():
    from vlv.config import load_config
    from vlv.pipeline import pipeline_steps

    paper = load_config("paper")
    work = {step.name: step.work(getattr(paper, step.name)) for step in pipeline_steps()}
    problems = fit_problems(work, ONE_CPU_NODES)
    assert any("8 x Ray Train worker (1 CPU, 1 GPU each)" in p and "train_stage1" in p for p in problems)
    assert any("8 x aesthetic scoring actor (4 CPU, 1 GPU each)" in p for p in problems)
    big = ClusterShape(nodes=(NodeShape("node g", 64, 8), NodeShape("node h", 64, 8)))
    assert fit_problems(work, big) == []


def test_local_weight_paths_are_checked_where_they_load(tmp_path):
    present = tmp_path / "weights.pth"
    present.write_bytes(b"w")
    problems = missing_paths_on_nodes({"a.weights": str(present), "b.weights": str(tmp_path / "gone.pth"),
                                       "c.weights": "org/hub-model"}, on_cluster=False)
    assert problems == [f"b.weights={str(tmp_path / 'gone.pth')!r} does not exist on this machine: download it "
                        f"there, or point b.weights at the file or folder that holds it"]


def test_store_uris_are_checked_through_the_store(s3_bucket):
    from vlv.engine.storage import filesystem

    fs, path = filesystem(f"s3://{s3_bucket}/models/predictor.pth")
    fs.pipe_file(path, b"weights")
    problems = missing_paths_on_nodes({"x": f"s3://{s3_bucket}/models/predictor.pth",
                                       "y": f"s3://{s3_bucket}/models/missing.pth"}, on_cluster=True)
    assert problems == [f"y='s3://{s3_bucket}/models/missing.pth' does not exist: upload it there or fix the setting"]


def test_every_node_of_the_session_ray_checks_a_local_path(ray_session, tmp_path):
    problems = missing_paths_on_nodes({"w": str(tmp_path / "absent.bin")}, on_cluster=True)
    assert len(problems) == 1 and "does not exist on node 127.0.0.1" in problems[0] and "s3://" in problems[0]


def test_the_pipeline_refuses_an_impossible_request_before_any_step(ray_session, tmp_path, capsys):
    from pipelines import full_run

    code = full_run.main(["--preset", "tiny", "--store", str(tmp_path / "store"), "--steps", "prepare_metadata",
                          "--set", "ingest_captions.num_threads=8"])
    assert code == 0  # ingest_captions is not planned: only planned steps are checked
    code = full_run.main(["--preset", "tiny", "--store", str(tmp_path / "store2"),
                          "--set", "ingest_captions.num_threads=8"])
    err = capsys.readouterr().err
    assert code == 2 and "preflight against the Ray cluster failed, no step was run" in err
    assert "step 'ingest_captions' asks for its step task: 8 CPU" in err and "largest node" in err
    assert not (tmp_path / "store2" / "steps").exists()


@pytest.mark.parametrize("cpus", [0.5])
def test_fractional_requests_fit(cpus):
    assert fit_problems({"report": StepWork(Resources(num_cpus=cpus))}, ONE_CPU_NODES) == []
