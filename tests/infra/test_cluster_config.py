"""ray_cluster.yaml is a valid Ray cluster-launcher config for the `paper` preset (checked without AWS)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GPU_IMAGE = "rayproject/ray:2.60.0-py311-gpu"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_validates_against_the_schema_shipped_with_ray(cluster):
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(cluster, schema)


def test_schema_check_can_fail(cluster):
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    broken = {**cluster, "available_node_types": {"head_cpu": {"node_config": {}}}}  # no `resources`
    with pytest.raises(jsonschema.ValidationError, match="resources"):
        jsonschema.validate(broken, schema)


def test_ray_accepts_it_after_filling_its_aws_defaults(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    full = prepare_config(cluster)
    validate_config(full)  # head type exists, min_workers within max_workers, ...
    assert full["provider"]["type"] == "aws"


def test_cpu_head_and_8_gpu_workers_spot_with_on_demand_fallback(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types and all(t["resources"]["GPU"] == 8 for t in gpu_types.values())
    spot = [n for n, t in gpu_types.items() if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType")
            == "spot"]
    on_demand = [n for n, t in gpu_types.items() if "InstanceMarketOptions" not in t["node_config"]]
    assert spot and on_demand
    spot_instance = gpu_types[spot[0]]["node_config"]["InstanceType"]
    assert any(gpu_types[n]["node_config"]["InstanceType"] == spot_instance for n in on_demand)
    assert all(t.get("min_workers", 0) == 0 for t in gpu_types.values()), "GPU nodes start only on demand"
    assert cluster["idle_timeout_minutes"] > 0 and cluster["max_workers"] >= 1


def test_image_install_and_environment(cluster):
    assert cluster["docker"]["image"] == GPU_IMAGE
    assert "ray-ml" not in json.dumps(cluster)
    assert any("pip install" in c and "-e /home/ray/vlv" in c for c in cluster["setup_commands"])
    assert cluster["file_mounts"]["/home/ray/vlv"] == "."
    assert ".venv" in cluster["rsync_exclude"]
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        start = commands[-1]
        assert "ray start" in start and "RAY_AUTH_MODE=token" in start and "vlv_cluster.env" in start
    assert "--dashboard-host=127.0.0.1" in cluster["head_start_ray_commands"][-1]
    assert cluster["file_mounts"]["~/vlv_cluster.env"] == ".vlv_cluster.env"
