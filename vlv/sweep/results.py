"""A sweep's results in its store folder: results.csv (one row per point), a plot per metric, sweep.json.

`<store>/sweeps/<sweep-id>/` on a local folder or an object store. The table is rewritten as each point
finishes, so a long sweep shows its finished points while the rest run; its content depends only on the points'
outputs, so rerunning a finished sweep writes the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vlv.engine.store import RunStore
from vlv.paths import check_relative
from vlv.sweep.grid import PreparedSweep, SweepPoint, format_value

RESULTS_CSV = "results.csv"
SWEEP_JSON = "sweep.json"


@dataclass
class PointResult:
    point: SweepPoint
    status: str = "pending"  # pending | ok | failed
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # the headline metrics its steps published
    ran: int = 0  # steps executed by this invocation
    cached: int = 0
    parent_run_id: str | None = None


def sweep_folder_uri(store: RunStore, sweep_id: str) -> str:
    check_relative(sweep_id, store.uri, "sweep id", single=True)
    return os.path.join(store.root, "sweeps", sweep_id) if store.is_local else f"{store.uri}/sweeps/{sweep_id}"


def results_table(sweep: PreparedSweep, results: Sequence[PointResult], metric_names: Sequence[str]) -> str:
    """The CSV text: point index, one column per axis (the value's label), status, error, every headline metric
    (empty where the point has no such number)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["point", *(axis.name for axis in sweep.spec.axes), "status", "error", *metric_names])
    for result in results:
        writer.writerow([result.point.index, *(label for _, label in result.point.values), result.status,
                         result.error, *(_number(result.metrics.get(name)) for name in metric_names)])
    return out.getvalue()


def sweep_description(sweep: PreparedSweep, store_uri: str) -> str:
    """sweep.json: what the sweep is, so its folder explains itself (the command that resumes it included)."""
    spec = sweep.spec
    command = ["python", "pipelines/sweep.py", "--preset", spec.preset, "--store", store_uri]
    if spec.config_file:
        command += ["--config", spec.config_file]
    command += [arg for key, value in spec.base_overrides.items() for arg in ("--set", f"{key}={format_value(value)}")]
    return json.dumps({
        "sweep_id": sweep.sweep_id, "preset": spec.preset, "description": spec.description,
        "config_file": spec.config_file,
        "set": {key: format_value(value) for key, value in spec.base_overrides.items()},
        "axes": [{"name": axis.name, "source": axis.source,
                  "values": {v.label: {k: format_value(x) for k, x in v.settings.items()} for v in axis.values}}
                 for axis in spec.axes],
        "points": [{"index": p.index, "label": p.label,
                    "overrides": {k: format_value(v) for k, v in p.overrides.items()}} for p in sweep.points],
        "resume": " ".join(command) + " (plus the same --grid / --grid-file flags)",
    }, indent=2) + "\n"


def write_sweep_file(store: RunStore, sweep_id: str, name: str, data: bytes) -> str:
    """Write one file into the sweep's folder (atomically on a local store); returns its URI."""
    folder = sweep_folder_uri(store, sweep_id)
    if store.is_local:
        Path(folder).mkdir(parents=True, exist_ok=True)
        target = Path(folder) / name
        partial = target.with_name(f".{name}.partial")
        partial.write_bytes(data)
        os.replace(partial, target)
        return str(target)
    uri = f"{folder}/{name}"
    store.fs.pipe_file(f"{store.root}/sweeps/{sweep_id}/{name}", data)
    return uri


def metric_plots(sweep: PreparedSweep, results: Sequence[PointResult], metric_names: Sequence[str],
                 folder: Path) -> list[Path]:
    """One PNG per metric that some point has: the metric against the axis value when the grid is one numeric
    axis, else a bar per point (labelled with its values). Failed points are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    numeric_axis = len(sweep.spec.axes) == 1 and all(_is_number(v.label) for v in sweep.spec.axes[0].values)
    written = []
    for name in metric_names:
        shown = [(r.point, r.metrics[name]) for r in results if r.status == "ok" and name in r.metrics]
        if not shown:
            continue
        figure = Figure(figsize=(max(4.0, 0.9 * len(shown) + 2.0), 3.2), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        values = [value for _, value in shown]
        if numeric_axis:
            xs = [float(point.values[0][1]) for point, _ in shown]
            axes.plot(xs, values, marker="o")
            axes.set_xlabel(sweep.spec.axes[0].name)
        else:
            axes.bar(range(len(shown)), values)
            axes.set_xticks(range(len(shown)))
            axes.set_xticklabels([" ".join(label for _, label in point.values) for point, _ in shown],
                                 rotation=30, ha="right", fontsize=8)
            axes.set_xlabel(", ".join(axis.name for axis in sweep.spec.axes))
        axes.set_ylabel(name)
        axes.set_title(f"{name} across sweep {sweep.sweep_id}", fontsize=9)
        figure.tight_layout()
        path = folder / f"{name}.png"
        figure.savefig(path, metadata={"Software": None})
        written.append(path)
    return written


def _number(value: Any) -> str:
    if value is None:
        return ""
    value = float(value)
    return repr(value) if math.isfinite(value) else str(value)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False

