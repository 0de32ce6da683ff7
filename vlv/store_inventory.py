"""What a store holds, for `vlv status` and `vlv verify`: every published output, not only this config's.

A store accumulates outputs of many configurations (every `--set` is another key). Listing only the keys the
current config would use hides the rest ("0 published outputs intact" on a store holding ten), so both
commands walk the whole store and mark the outputs the current config uses. They only read: a store that does
not exist is reported in one line and never created.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

from vlv.engine.manifest import Manifest, verify_files
from vlv.engine.plan import PlannedStep
from vlv.engine.store import RunStore


@dataclass(frozen=True)
class PublishedOutput:
    step: str
    key: str
    manifest: Manifest
    uri: str
    used_by_config: bool

    @property
    def config_digest(self) -> str:
        """A short digest of the step's config section: equal digests, same settings."""
        return hashlib.sha256(json.dumps(self.manifest.config, sort_keys=True).encode()).hexdigest()[:8]


def open_existing_store(uri: str) -> RunStore:
    """The store at `uri` for reading; ValueError in one line if it does not exist or cannot be read."""
    store = RunStore(uri, create=False)
    if store.is_local:
        from pathlib import Path

        root = Path(store.root)
        if not root.exists():
            raise ValueError(f"no store at {uri}: nothing has run there yet (run the pipeline with --store {uri})")
        if not root.is_dir():
            raise ValueError(f"store {uri} is not a folder")
        try:
            next(iter(root.iterdir()), None)
        except PermissionError:
            raise ValueError(f"store {uri} cannot be read: permission denied (check its owner and mode)") from None
    else:
        store.check_access(write=False)
    return store


def inventory(store: RunStore, plan: Sequence[PlannedStep], step_order: Sequence[str]) -> list[PublishedOutput]:
    """Every published output of the store, in pipeline order then by date, marked if `plan` uses it."""
    used = {(p.name, p.key) for p in plan}
    order = {name: i for i, name in enumerate(step_order)}
    found = []
    for step in sorted(store.published_steps(), key=lambda s: (order.get(s, len(order)), s)):
        for key in store.published_keys(step):
            output = store.output(step, key)
            if output is not None:
                found.append(PublishedOutput(step, key, output.manifest, output.uri, (step, key) in used))
    return sorted(found, key=lambda o: (order.get(o.step, len(order)), o.manifest.created_at))


def format_status(store: RunStore, outputs: Sequence[PublishedOutput], plan: Sequence[PlannedStep],
                  states: dict[str, str]) -> str:
    total = sum(o.manifest.total_bytes for o in outputs)
    lines = [f"store {store.uri}: {len(outputs)} published output(s) of {len({o.step for o in outputs})} step(s), "
             f"{_size(total)}", "",
             f"{'step':<18}{'key':<22}{'published (UTC)':<27}{'size':>10}  {'config':<9}{'MLflow run':<34}this config"]
    for o in outputs:
        lines.append(f"{o.step:<18}{o.key:<22}{o.manifest.created_at:<27}{_size(o.manifest.total_bytes):>10}  "
                     f"{o.config_digest:<9}{(o.manifest.mlflow_run_id or '-'):<34}{'yes' if o.used_by_config else ''}")
    missing = [f"{p.name} ({states[p.name]})" for p in plan if not any(o.used_by_config and o.step == p.name
                                                                        for o in outputs)]
    lines.append("")
    lines.append("this config's steps without an output: " + (", ".join(missing) if missing else "none"))
    return "\n".join(lines)


def verify_all(outputs: Sequence[PublishedOutput]) -> list[tuple[PublishedOutput, list[str]]]:
    """Every file of every output against its manifest (sizes and sha256), read through the store."""
    return [(o, verify_files(o.uri, o.manifest)) for o in outputs]


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} B"
