"""`map_chunks_with_tasks`: one Ray task per chunk, results in chunk order, errors surface on the driver."""

from __future__ import annotations

import os

import pytest

from vlv.engine.executor import map_chunks_with_tasks


def _sum_and_pid(chunk: list[int]) -> tuple[int, int]:
    return sum(chunk), os.getpid()


def _fail_on_negative(chunk: list[int]) -> int:
    if min(chunk) < 0:
        raise ValueError(f"negative value in chunk {chunk}")
    return len(chunk)


def test_results_come_back_in_chunk_order_from_worker_processes(ray_session):
    results = map_chunks_with_tasks(_sum_and_pid, [[1, 2], [10], [100, 200, 300]], num_cpus=0.5, name="t:sum")
    assert [total for total, _ in results] == [3, 10, 600]
    assert all(pid != os.getpid() for _, pid in results)


def test_a_failing_task_raises_its_error_on_the_driver(ray_session):
    with pytest.raises(ValueError, match=r"negative value in chunk \[-1\]"):
        map_chunks_with_tasks(_fail_on_negative, [[1], [-1]], num_cpus=0.5, max_retries=0)
