"""Running a step's map over the worker pool it declares: an actor pool, or a task map.

A step declares its pools (`Step.worker_pools`, a function of its config) and, in `run`, hands the same
`WorkerPool` to one of these:
- `map_on_actors`: `pool.count` Ray actors, each building `actor_cls(**constructor_kwargs)` once (a model
  load), then calling it on item after item. Results come back in item order; at most `in_flight_per_actor`
  items per actor are submitted and not yet returned, so a long input is never all in memory or in the object
  store at once. This is what Ray Data's `map_batches` with an actor pool did for the steps, without its
  batching and block machinery: the step decides what an item is (a shard, a batch of files).
- `map_on_tasks`: `fn(chunk)` for every chunk as Ray tasks of the pool's size, at most `pool.count` running,
  results in chunk order (one model load per task: FID statistics, LLM answers).
Both log progress (items done, rate, time left) every `_PROGRESS_EVERY_S` seconds, and join or start Ray like
`connect_ray` if no Ray is running yet.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from vlv.engine.executor import connect_ray
from vlv.engine.progress_board import publish
from vlv.engine.step import WorkerPool
from vlv.progress import rate_and_eta

log = logging.getLogger("vlv.pools")

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

_PROGRESS_EVERY_S = 30.0


class _ActorHost:
    """The Ray actor around a step's callable class: built once per actor, called once per item."""

    def __init__(self, actor_cls: type, constructor_kwargs: dict[str, Any]):
        self._callable = actor_cls(**constructor_kwargs)

    def call(self, item: Any) -> Any:
        return self._callable(item)


def map_on_actors(pool: WorkerPool, actor_cls: type, items: Iterable[Any], *,
                  constructor_kwargs: dict[str, Any] | None = None, total: int | None = None,
                  unit: str = "items", in_flight_per_actor: int = 2, max_restarts: int = 1) -> Iterator[Any]:
    """Yield `actor(item)` for every item, in item order, computed by the pool's actors.

    `actor_cls` is a module-level class (Ray ships it by reference) whose instances are callables; its
    `__call__` should be idempotent: an item whose actor died is retried once on the restarted actor
    (`max_restarts`). An exception raised by `__call__` stops the map and is raised here. `total` (when known)
    gives the progress lines a time left. Closing the iterator early kills the actors.
    """
    import ray

    if pool.kind != "actors":
        raise ValueError(f"map_on_actors runs an actor pool; pool '{pool.name}' is of kind {pool.kind!r}")
    if in_flight_per_actor < 1:
        raise ValueError(f"in_flight_per_actor must be >= 1, got {in_flight_per_actor}")
    if not ray.is_initialized():
        connect_ray()
    host = ray.remote(_ActorHost).options(num_cpus=pool.cpus, num_gpus=pool.gpus, max_restarts=max_restarts,
                                          max_task_retries=max_restarts)
    actors = [host.remote(actor_cls, constructor_kwargs or {}) for _ in range(pool.count)]
    window: collections.deque[Any] = collections.deque()
    progress = _Progress(pool, total, unit)
    try:
        for index, item in enumerate(items):
            if len(window) >= pool.count * in_flight_per_actor:
                yield progress.done(ray.get(window.popleft()))
            window.append(actors[index % pool.count].call.remote(item))
        while window:
            yield progress.done(ray.get(window.popleft()))
        progress.finish()
    finally:
        for actor in actors:
            ray.kill(actor)


def map_on_tasks(pool: WorkerPool, fn: Callable[[ItemT], ResultT], chunks: Sequence[ItemT], *,
                 max_retries: int = 1) -> list[ResultT]:
    """`[fn(chunk) for chunk in chunks]`, each call a Ray task of the pool's CPUs and GPUs, at most `pool.count`
    at once; results in chunk order.

    `fn` must be a module-level function (Ray ships it by reference) and should be idempotent, since a task
    lost with its worker is retried (`max_retries`). An exception raised by `fn` is raised here.
    """
    import ray

    if pool.kind != "tasks":
        raise ValueError(f"map_on_tasks runs a task map; pool '{pool.name}' is of kind {pool.kind!r}")
    if not ray.is_initialized():
        connect_ray()
    task = ray.remote(fn).options(num_cpus=pool.cpus, num_gpus=pool.gpus, max_retries=max_retries,
                                  name=f"vlv:{pool.name}")
    results: list[Any] = [None] * len(chunks)
    index_of: dict[Any, int] = {}
    waiting = iter(enumerate(chunks))
    running: list[Any] = []
    progress = _Progress(pool, len(chunks), "tasks")
    while True:
        while len(running) < pool.count:
            nxt = next(waiting, None)
            if nxt is None:
                break
            ref = task.remote(nxt[1])
            index_of[ref] = nxt[0]
            running.append(ref)
        if not running:
            break
        done, running = ray.wait(running, num_returns=1)
        results[index_of.pop(done[0])] = progress.done(ray.get(done[0]))
    return results


def map_chunks_with_tasks(fn: Callable[[ItemT], ResultT], chunks: Sequence[ItemT], *, num_cpus: float,
                          num_gpus: float = 0.0, name: str = "chunk task", max_retries: int = 1,
                          max_concurrent: int | None = None) -> list[ResultT]:
    """`map_on_tasks` for callers that pass the resources one by one: one task per chunk, at most
    `max_concurrent` at once (None: all of them)."""
    if not chunks:
        return []
    count = min(max_concurrent, len(chunks)) if max_concurrent else len(chunks)
    pool = WorkerPool(name.removeprefix("vlv:"), "tasks", count, num_cpus, num_gpus)
    return map_on_tasks(pool, fn, chunks, max_retries=max_retries)


class _Progress:
    """Counts results and logs `pool: n/total units, rate, ETA` at most every `every_s` seconds (none for a map
    shorter than that), and at the end at DEBUG. On a terminal the counts go to the live status line
    (vlv.engine.progress_board) with each result, and the periodic line to DEBUG."""

    def __init__(self, pool: WorkerPool, total: int | None, unit: str, every_s: float = _PROGRESS_EVERY_S):
        self.pool, self.total, self.unit, self.every_s = pool, total, unit, every_s
        self.count = 0
        self.started = self.last_log = time.monotonic()

    def done(self, result: Any) -> Any:
        self.count += 1
        now = time.monotonic()
        on_status_line = publish(self.pool.name, self.count, self.total, self.unit, now - self.started)
        if now - self.last_log >= self.every_s:
            self.last_log = now
            self._log(now, level=logging.DEBUG if on_status_line else logging.INFO)
        return result

    def finish(self) -> None:
        """The closing count at DEBUG: the step's own result line says it on the console."""
        self._log(time.monotonic(), level=logging.DEBUG)

    def _log(self, now: float, level: int = logging.INFO) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        log.log(level, "%s: %d%s %s done on %s, %s", self.pool.name, self.count, of, self.unit, self.pool.describe(),
                 rate_and_eta(self.count, self.total or 0, now - self.started, self.unit))
