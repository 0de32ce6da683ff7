"""Decide what a pipeline invocation does: each step's cache key and whether it runs, is cached or is skipped.

Key = sha256 of (step name, step code version, the step's own config section, upstream keys), so changing one
section invalidates that step and everything downstream and nothing else. Settings marked RUNTIME_ONLY (a port)
change how a step runs, not what it publishes, and are left out.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from vlv.config_tree import output_settings, to_dict
from vlv.engine.step import Step, StepWork
from vlv.engine.store import RunStore

Action = Literal["run", "cached", "skip"]


@dataclass(frozen=True)
class PlannedStep:
    name: str
    key: str
    upstream_keys: dict[str, str]
    action: Action
    reason: str
    section: Any  # the step's typed config section (its dataclass), as the step sees it in `ctx.config`
    work: StepWork  # what the step declares it runs for this section: its task and its worker pools
    forced: bool = False  # by --force/--from: runs even if another invocation publishes it meanwhile
    waiting: bool = False  # skipped because it waits for an outside input (Step.waiting_for)

    @property
    def settings(self) -> dict[str, Any]:
        """The section as a plain dict (MLflow parameters)."""
        return to_dict(self.section)


def step_key(name: str, code_version: str, section: dict[str, Any], upstream_keys: dict[str, str]) -> str:
    payload = json.dumps(
        {"step": name, "code_version": code_version, "config": section, "upstream": upstream_keys},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def downstream_of(steps: Sequence[Step], name: str) -> list[str]:
    """`name` and every step that depends on it, directly or not, in pipeline order."""
    found = {name}
    for step in steps:
        if any(up in found for up in step.upstream):
            found.add(step.name)
    return [s.name for s in steps if s.name in found]


def upstream_of(steps: Sequence[Step], name: str) -> list[str]:
    """Every step `name` depends on, directly or not, in pipeline order (`name` itself excluded)."""
    found = {name}
    for step in reversed(steps):
        if step.name in found:
            found.update(step.upstream)
    return [s.name for s in steps if s.name in found and s.name != name]


def make_plan(
    steps: Sequence[Step],
    config: Any,
    store: RunStore,
    *,
    only: Sequence[str] = (),
    from_step: str | None = None,
    force: Sequence[str] = (),
) -> list[PlannedStep]:
    names = [s.name for s in steps]
    named = {"--steps": list(only), "--force": list(force), "--from": [from_step] if from_step else []}
    for flag, value in named.items():
        for name in value:
            if name not in names:
                raise ValueError(f"{flag}: unknown step '{name}'; valid steps: {', '.join(names)}")
    if only and from_step:
        raise ValueError("--steps and --from cannot be combined: --steps runs exactly the named steps, "
                         "--from runs a step and everything downstream")
    forced = set(force) | (set(downstream_of(steps, from_step)) if from_step else set())
    in_scope = set(only) if only else set(names)  # the steps --steps names (all without it)

    keys: dict[str, str] = {}
    plan: list[PlannedStep] = []
    for step in steps:
        section = getattr(config, step.name)
        upstream_keys = {up: keys[up] for up in step.upstream}
        key = step_key(step.name, step.code_version, output_settings(section), upstream_keys)
        keys[step.name] = key
        waiting = step.waiting_for(section)
        if step.name not in in_scope:
            action, reason = "skip", "not selected by --steps"
        elif waiting and step.name not in set(only) | set(force) and not store.is_published(step.name, key):
            action, reason = "skip", f"waiting for {waiting}"
        elif step.name in forced:
            action, reason = "run", "forced" if step.name in force else f"downstream of --from {from_step}"
        elif store.is_published(step.name, key):
            action, reason = "cached", "output already published for this key"
        else:
            action, reason = "run", "no published output for this key"
        plan.append(PlannedStep(step.name, key, upstream_keys, action, reason, section, step.work(section),
                                forced=action == "run" and step.name in forced,
                                waiting=action == "skip" and reason.startswith("waiting for")))

    by_name = {p.name: p for p in plan}
    steps_by_name = {s.name: s for s in steps}
    for planned in plan:
        if planned.action != "run":
            continue
        for up, up_key in planned.upstream_keys.items():
            if by_name[up].waiting and up in steps_by_name[planned.name].optional_upstream:
                continue  # runs without it
            if by_name[up].action == "skip" and not store.is_published(up, up_key):
                raise ValueError(
                    f"step '{planned.name}' needs the output of step '{up}' (key {up_key}), which is not in "
                    f"store {store.uri}; produce it first with: python pipelines/full_run.py --steps {up} "
                    f"(same --preset/--config/--set/--store), or drop --steps to run everything"
                )
    return plan


def describe_plan(plan: Sequence[PlannedStep]) -> str:
    """Human-readable plan (what --dry-run prints): one line a step, and under each step that runs, the work it
    declares (its task, its worker pools)."""
    width = max(len(p.name) for p in plan)
    lines = []
    for p in plan:
        lines.append(f"{p.name:<{width}}  {p.action:<6}  key={p.key}  ({p.reason})")
        if p.action == "run":
            lines.append(f"{'':<{width}}  runs on: {p.work.describe()}")
    return "\n".join(lines)
