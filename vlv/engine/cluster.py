"""Preflight against the Ray cluster: every step's declared workers must fit some node, before anything runs.

Ray queues a request no node can ever satisfy for ever (the autoscaler logs "No available node types can
fulfill" every 35 s and the pipeline hangs). The steps declare their own task (`Resources`) and their worker
pools (`WorkerPool`), together `Step.work`, the same declarations the plan prints and the steps run on, so the plan
can be checked against the nodes that are up and the node types the
autoscaler may start, and an impossible request becomes one error naming the step, what it asks for and the
largest node.

Also here: local weight paths checked on every node that may load them (a path that exists on the driver's
machine may not exist on the workers').
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping

from vlv.engine.step import StepWork, WorkerPool
from vlv.engine.storage import filesystem, is_remote

log = logging.getLogger("vlv.cluster")


@dataclass(frozen=True)
class NodeShape:
    name: str
    cpus: float
    gpus: float
    max_count: int = 1  # autoscaler node types: how many of them may run at once (-1: no limit)

    def describe(self) -> str:
        return f"{self.name} ({self.cpus:g} CPU, {self.gpus:g} GPU)"


@dataclass(frozen=True)
class ClusterShape:
    nodes: tuple[NodeShape, ...]  # alive nodes now
    node_types: tuple[NodeShape, ...] = ()  # what the autoscaler may add

    def shapes(self) -> tuple[NodeShape, ...]:
        return self.nodes + self.node_types

    def largest(self) -> NodeShape:
        return max(self.shapes(), key=lambda n: (n.gpus, n.cpus))


def current_cluster() -> ClusterShape:
    """The alive nodes of the connected Ray and, when an autoscaler config is registered, its node types."""
    import ray

    nodes = tuple(
        NodeShape(name=f"node {n.get('NodeManagerAddress', '?')} ({n['NodeID'][:8]})",
                  cpus=float(n.get("Resources", {}).get("CPU", 0.0)),
                  gpus=float(n.get("Resources", {}).get("GPU", 0.0)))
        for n in ray.nodes() if n.get("Alive")
    )
    types: list[NodeShape] = []
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception as err:  # noqa: BLE001 - private API: without it we judge by the nodes that are up
        log.debug("no autoscaler config readable: %s", err)
        config = None
    for group in getattr(config, "node_group_configs", []) or []:
        resources = dict(group.resources)
        types.append(NodeShape(name=f"node type {group.name}", cpus=float(resources.get("CPU", 0)),
                               gpus=float(resources.get("GPU", 0)), max_count=int(group.max_count)))
    return ClusterShape(nodes=nodes, node_types=tuple(types))


def fit_problems(work: Mapping[str, StepWork], cluster: ClusterShape) -> list[str]:
    """Each declared task or worker that can never be placed (step name -> its declared work), as a sentence
    naming the step, the request and the largest node. Process pools run inside the step's task: not checked."""
    if not cluster.shapes():
        return ["the Ray cluster has no alive node"]
    largest = cluster.largest()
    problems = []
    for step, declared in work.items():
        pools = [pool for pool in declared.pools if pool.placed_by_ray]
        bundles = [("its step task", declared.task.num_cpus, declared.task.num_gpus)]
        bundles += [(pool.describe(), pool.cpus, pool.gpus) for pool in pools]
        for what, cpus, gpus in bundles:
            if not any(_fits(shape, cpus, gpus) for shape in cluster.shapes()):
                problems.append(f"step '{step}' asks for {what}: {cpus:g} CPU and {gpus:g} GPU per worker, "
                                f"but the largest node is {largest.describe()}")
        for pool in pools:
            if pool.gang and not _gang_fits(pool, cluster):
                problems.append(f"step '{step}' needs {pool.describe()} placed at once, but the cluster "
                                f"holds at most {_capacity(pool, cluster)} such workers "
                                f"({', '.join(n.describe() for n in cluster.shapes())})")
    return problems


def _fits(shape: NodeShape, cpus: float, gpus: float) -> bool:
    return cpus <= shape.cpus + 1e-9 and gpus <= shape.gpus + 1e-9


def _per_node(shape: NodeShape, pool: WorkerPool) -> int:
    by_cpu = int((shape.cpus + 1e-9) // pool.cpus) if pool.cpus > 0 else 10**6
    by_gpu = int((shape.gpus + 1e-9) // pool.gpus) if pool.gpus > 0 else 10**6
    return min(by_cpu, by_gpu)


def _capacity(pool: WorkerPool, cluster: ClusterShape) -> int:
    total = sum(_per_node(n, pool) for n in cluster.nodes)
    for node_type in cluster.node_types:
        per = _per_node(node_type, pool)
        if per and node_type.max_count < 0:
            return 10**6
        total += per * max(node_type.max_count, 0)
    return total


def _gang_fits(pool: WorkerPool, cluster: ClusterShape) -> bool:
    return _capacity(pool, cluster) >= pool.count


def missing_paths_on_nodes(paths: dict[str, str], *, on_cluster: bool) -> list[str]:
    """Settings whose path does not exist where it will be loaded, as sentences naming the node and the fix.

    A store or hub URI (s3://, gs://) is checked once through its filesystem. A local path is checked on this
    machine for an embedded Ray, and on every alive node of a cluster (one tiny Ray task per node).
    """
    problems = []
    local: dict[str, str] = {}
    for setting, value in paths.items():
        if not value:
            continue
        if is_remote(value):
            fs, path = filesystem(value)
            try:
                found = fs.exists(path)
            except Exception as err:  # noqa: BLE001 - unreachable endpoint, refused credentials, ...
                problems.append(f"{setting}={value!r} cannot be checked: {type(err).__name__}: {err}")
                continue
            if not found:
                problems.append(f"{setting}={value!r} does not exist: upload it there or fix the setting")
        elif value.startswith(("/", ".", "~")):
            local[setting] = os.path.expanduser(value)
    if not local:
        return problems
    if not on_cluster:
        for setting, value in local.items():
            if not os.path.exists(value):
                problems.append(f"{setting}={value!r} does not exist on this machine: download it there, or point "
                                f"{setting} at the file or folder that holds it")
        return problems
    for node, missing in _check_on_every_node(local).items():
        for setting in missing:
            problems.append(f"{setting}={local[setting]!r} does not exist on {node}: copy it to every node, or put "
                            f"it in the store and set {setting} to its s3:// or gs:// URI (fetched once per node)")
    return problems


def _exists_here(paths: dict[str, str]) -> list[str]:
    return [setting for setting, value in paths.items() if not os.path.exists(value)]


def _check_on_every_node(paths: dict[str, str]) -> dict[str, list[str]]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(_exists_here)
    refs = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        name = f"node {node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"
        refs[name] = check.options(num_cpus=0, scheduling_strategy=strategy, name="vlv:check-paths").remote(paths)
    return {name: missing for name, missing in zip(refs, ray.get(list(refs.values()))) if missing}
