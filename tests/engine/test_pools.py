"""`vlv.engine.pools`: maps over a declared worker pool (actors, tasks) in worker processes, results in input
order, at most a bounded number of items in flight, errors raised on the driver."""

from __future__ import annotations

import os

import pytest

from vlv.engine.pools import map_chunks_with_tasks, map_on_actors, map_on_tasks
from vlv.engine.step import WorkerPool


def _sum_and_pid(chunk: list[int]) -> tuple[int, int]:
    return sum(chunk), os.getpid()


def _fail_on_negative(chunk: list[int]) -> int:
    if min(chunk) < 0:
        raise ValueError(f"negative value in chunk {chunk}")
    return len(chunk)


class _Scale:
    """A toy pool actor: `factor` set once, then item after item."""

    def __init__(self, factor: int):
        self.factor = factor
        self.calls = 0

    def __call__(self, item: int) -> tuple[int, int, int]:
        if item < 0:
            raise ValueError(f"negative item {item}")
        self.calls += 1
        return item * self.factor, os.getpid(), self.calls


ACTORS = WorkerPool("scaling actor", "actors", 2, 0.5)
TASKS = WorkerPool("sum task", "tasks", 2, 0.5)


def test_results_come_back_in_chunk_order_from_worker_processes(ray_session):
    results = map_on_tasks(TASKS, _sum_and_pid, [[1, 2], [10], [100, 200, 300]])
    assert [total for total, _ in results] == [3, 10, 600]
    assert all(pid != os.getpid() for _, pid in results)
    assert [t for t, _ in map_chunks_with_tasks(_sum_and_pid, [[1], [2, 3]], num_cpus=0.5, name="t:sum")] == [1, 5]


def test_a_failing_task_raises_its_error_on_the_driver(ray_session):
    with pytest.raises(ValueError, match=r"negative value in chunk \[-1\]"):
        map_on_tasks(TASKS, _fail_on_negative, [[1], [-1]], max_retries=0)


def test_actor_results_come_in_item_order_from_actors_built_once(ray_session):
    results = list(map_on_actors(ACTORS, _Scale, range(7), constructor_kwargs={"factor": 3}))
    assert [value for value, _, _ in results] == [3 * i for i in range(7)]
    pids = {pid for _, pid, _ in results}
    assert len(pids) == 2 and os.getpid() not in pids
    # round robin over two actors, each built once: its call counter runs 1, 2, 3, ... over its items
    assert [calls for _, _, calls in results] == [1, 1, 2, 2, 3, 3, 4]


def test_the_input_is_read_only_as_far_as_the_in_flight_bound(ray_session):
    pulled = []

    def items():
        for i in range(20):
            pulled.append(i)
            yield i

    one_actor = WorkerPool("scaling actor", "actors", 1, 0.5)
    results = map_on_actors(one_actor, _Scale, items(), constructor_kwargs={"factor": 1}, in_flight_per_actor=2)
    assert next(results)[0] == 0
    assert len(pulled) == 3  # two submitted, the third waiting for the first result
    assert [value for value, _, _ in results] == list(range(1, 20))


def test_an_actor_error_is_raised_on_the_driver(ray_session):
    with pytest.raises(ValueError, match="negative item -1"):
        list(map_on_actors(ACTORS, _Scale, [1, 2, -1, 3], constructor_kwargs={"factor": 1}))


def test_a_pool_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="pool 'sum task' is of kind 'tasks'"):
        next(map_on_actors(TASKS, _Scale, [1]))
    with pytest.raises(ValueError, match="pool 'scaling actor' is of kind 'actors'"):
        map_on_tasks(ACTORS, _sum_and_pid, [[1]])


def test_worker_pool_declarations_are_validated():
    with pytest.raises(ValueError, match="kind must be one of actors, tasks, train_workers, processes"):
        WorkerPool("x", "threads", 1, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count must be >= 1"):
        WorkerPool("x", "tasks", 0, 1.0)
