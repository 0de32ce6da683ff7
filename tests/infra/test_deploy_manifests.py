"""Dockerfile, KubeRay RayJob and ray_cluster.yaml agree: Ray image tag, entrypoint, GPUs per worker."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


@pytest.fixture(scope="module")
def rayjob() -> dict:
    return yaml.safe_load((REPO / "infra" / "k8s" / "rayjob.yaml").read_text())


def dockerfile_base() -> str:
    lines = [line.strip() for line in (REPO / "infra" / "docker" / "Dockerfile").read_text().splitlines()]
    froms = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert len(froms) == 1, "one stage"
    return froms[0]


def tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_one_ray_image_tag_everywhere(cluster, rayjob):
    base = dockerfile_base()
    assert base == cluster["docker"]["image"] == "rayproject/ray:2.60.0-py311-gpu"
    spec = rayjob["spec"]["rayClusterSpec"]
    images = [c["image"] for c in containers(spec["headGroupSpec"])]
    images += [c["image"] for g in spec["workerGroupSpecs"] for c in containers(g)]
    assert images and all(tag(image) == tag(base) for image in images)
    assert spec["rayVersion"] == tag(base).split("-")[0]


def test_the_image_installs_the_project():
    text = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    copied = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$", text, flags=re.M)
    sources = {s for line in copied for s in line.split()}
    assert {"pyproject.toml", "vlv", "pipelines"} <= sources
    for source in sources:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    assert re.search(r"pip install -e \.", text)
    ignored = (REPO / "infra" / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and "vlv_runs" in ignored


def test_rayjob_runs_the_pipeline_entrypoint_and_cleans_up(rayjob):
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[1].endswith("pipelines/full_run.py")
    assert argv[argv.index("--preset") + 1] == "paper"
    # the image puts the project at /home/ray/vlv (Dockerfile WORKDIR)
    assert argv[1].startswith("/home/ray/vlv/")
    assert "WORKDIR /home/ray/vlv" in (REPO / "infra" / "docker" / "Dockerfile").read_text()
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["rayClusterSpec"]["authOptions"]["mode"] == "token"


def test_gpus_per_worker_agree(cluster, rayjob):
    cluster_gpus = {t["resources"]["GPU"] for t in cluster["available_node_types"].values()
                    if t["resources"].get("GPU")}
    job_gpus = set()
    for group in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        for c in containers(group):
            limits = c["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"]
            job_gpus.add(int(limits["nvidia.com/gpu"]))
    head = containers(rayjob["spec"]["rayClusterSpec"]["headGroupSpec"])[0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    from vlv.cost_plan import Workload

    assert cluster_gpus == job_gpus == {Workload().recipe_gpus}


def test_cluster_start_commands_and_rayjob_share_the_run_environment(cluster, rayjob):
    spec = rayjob["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for c in containers(group):
            assert {"configMapRef": {"name": "vlv-run-env"}} in c["envFrom"]
    header = (REPO / "infra" / "k8s" / "rayjob.yaml").read_text()
    assert "VLV_STORE=" in header and "MLFLOW_TRACKING_URI=" in header
    assert "VLV_STORE=" in (REPO / "ray_cluster.yaml").read_text()
