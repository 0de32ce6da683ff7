"""The tiny pipeline as a Ray job on a 4-node cluster on this host, with an S3 store, losing nodes mid-step.

The cluster is Ray's own test helper (`ray.cluster_utils.Cluster`): a head with no CPUs (it runs the job driver
only, so every step's work lands on worker nodes) and three 2-CPU worker nodes, every one pinned to 127.0.0.1.
The job is submitted with `ray job submit`, as a user would. While it runs the test kills (1) the node running
the download step, once some shards are in the store, and (2) a node hosting a Ray Train worker of stage 1,
once a checkpoint is in the store; each time it adds a fresh node, as an autoscaler would. The job must
finish, step work must have run on at least two nodes (Ray's state API), and every step must publish the files
of the uninterrupted local run, byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from vlv.engine.store import RunStore
from vlv.pipeline import step_names
from vlv.testing.object_store import free_port

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
JOB_DEADLINE_S = 3600  # a bound against a hung job, not a speed requirement
RUN_SPECIFIC = {("report", "report.html")}  # embeds run ids and times

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep every node on 127.0.0.1
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # the job's `python`
    dashboard_port = free_port()
    temp_dir = Path("/tmp") / f"vlvmn{uuid.uuid4().hex[:6]}"  # short: Ray's unix socket paths live under it
    # Every node's dashboard agent gets a free HTTP port: Ray's default (52365) is taken by any other Ray on the
    # machine, and job submission needs the head's agent ("No available agent to submit job").
    head = dict(num_cpus=0, node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1",
                dashboard_port=dashboard_port, dashboard_agent_listen_port=free_port(), temp_dir=str(temp_dir))
    made = Cluster(initialize_head=True, head_node_args=head)
    # The job supervisor finds the cluster through `<temp_dir>/ray_current_cluster` (as `ray start` writes it);
    # the helper writes only /tmp/ray's, and without the file Ray picks any GCS process running on the machine.
    (temp_dir / "ray_current_cluster").write_text(made.gcs_address)
    for _ in range(3):
        _add_worker_node(made)
    made.job_address = f"http://127.0.0.1:{dashboard_port}"
    try:
        yield made
    finally:
        made.shutdown()


def _add_worker_node(cluster) -> None:
    """A 2-CPU node with a temp dir of its own, as a separate machine has: nodes sharing one folder share the job's
    unpacked working dir, and the first node to stop using it deletes it under the others' running tasks."""
    temp_dir = Path("/tmp") / f"vlvmn{uuid.uuid4().hex[:6]}"
    cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1", dashboard_agent_listen_port=free_port(),
                     temp_dir=str(temp_dir))


def _ray(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([str(RAY), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _status(cluster, job_id: str) -> str:
    """The job's state from `ray job status`, which words it differently per state ("Status for job 'x': RUNNING"
    while it runs, "Job 'x' succeeded" at the end): matched case-insensitively."""
    done = _ray("job", "status", job_id, "--address", cluster.job_address, timeout=120)
    out = (done.stdout + done.stderr).lower()
    for status in ("SUCCEEDED", "FAILED", "STOPPED", "RUNNING", "PENDING"):
        if status.lower() in out:
            return status
    return "UNKNOWN"


def _running_task_node(cluster, name: str) -> str | None:
    from ray.util.state import list_tasks

    tasks = list_tasks(address=cluster.address, filters=[("name", "=", name), ("state", "=", "RUNNING")])
    return tasks[0].node_id if tasks else None


def _train_worker_nodes(cluster) -> set[str]:
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.address, filters=[("state", "=", "ALIVE")])
    return {a.node_id for a in actors if "TrainWorker" in (a.class_name or "")}


def _kill(cluster, node_id: str) -> None:
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(node, allow_graceful=False)
    _add_worker_node(cluster)  # as an autoscaler would


def _wait(condition, job_id: str, cluster, what: str, timeout: float = JOB_DEADLINE_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert _status(cluster, job_id) in ("PENDING", "RUNNING"), f"the job ended while waiting for {what}"
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_tiny_pipeline_survives_losing_nodes_and_equals_the_local_run(cluster, s3_server, tiny_store,
                                                                          tmp_path):
    s3_server.create_bucket("vlv-multinode")
    uri = "s3://vlv-multinode/runs"
    store = RunStore(uri)
    job_id = f"vlv-mn-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}}
    for _ in range(10):  # a fresh head's job agent may need a few seconds to register
        submitted = _ray("job", "submit", "--address", cluster.job_address, "--submission-id", job_id, "--no-wait",
                         "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--",
                         "python", "pipelines/full_run.py", "--preset", "tiny", "--store", uri)
        if submitted.returncode == 0 or "No available agent" not in submitted.stderr:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr

    def download_with_shards() -> str | None:
        node = _running_task_node(cluster, "vlv:download")
        shards = store.fs.glob(f"{store.root}/steps/download/*/attempts/*/shards/*_stats.json")
        store.fs.invalidate_cache()
        return node if node and shards else None

    _kill(cluster, _wait(download_with_shards, job_id, cluster, "the download step with a finished shard"))

    def training_with_checkpoint() -> str | None:
        nodes = _train_worker_nodes(cluster) - {cluster.head_node.node_id}
        checkpoints = store.fs.glob(f"{store.root}/scratch/train_stage1/*/ray/*/checkpoint_*")
        store.fs.invalidate_cache()
        return sorted(nodes)[0] if nodes and checkpoints else None

    _kill(cluster, _wait(training_with_checkpoint, job_id, cluster, "stage-1 training with a checkpoint"))

    deadline = time.monotonic() + JOB_DEADLINE_S
    while _status(cluster, job_id) in ("PENDING", "RUNNING") and time.monotonic() < deadline:
        time.sleep(5)
    logs = _ray("job", "logs", job_id, "--address", cluster.job_address).stdout
    assert _status(cluster, job_id) == "SUCCEEDED", logs[-5000:]

    from ray.util.state import list_tasks

    step_tasks = [t for t in list_tasks(address=cluster.address, limit=10000, detail=True)
                  if (t.name or "").startswith("vlv:")]
    assert len({t.node_id for t in step_tasks}) >= 2, "step work ran on one node only"

    local = RunStore(str(tiny_store))
    for step in step_names():
        keys = store.published_keys(step)
        assert keys == local.published_keys(step), step
        remote_files = {e.path: e.sha256 for e in store.read_manifest(step, keys[0]).files}
        local_files = {e.path: e.sha256 for e in local.read_manifest(step, keys[0]).files}
        assert sorted(remote_files) == sorted(local_files), step
        assert [p for p in remote_files if remote_files[p] != local_files[p]
                and (step, p) not in RUN_SPECIFIC] == [], step
