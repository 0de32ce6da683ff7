"""A sweep's grid: its axes (from `--grid key=v1,v2` and sweep files), its points, their validation and its id.

Why everything is checked first: a sweep can run for days, and a typo in the last point's value must not surface
after the first points trained. So every point's config is built (keys and types checked, every section's
validation run) before anything runs, and two points that would compute the same thing are refused.

The sweep id is a function of the preset, the base config (preset + `--config` + `--set`) and the grid, so the
same command names the same sweep again: a rerun resumes it (its finished points are cached in the store).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from vlv.config_tree import load_config_file

GRID_FILE_KEYS = ("description", "grid")


@dataclass(frozen=True)
class GridValue:
    """One value of an axis: its label (in results.csv and MLflow) and the config keys it sets."""

    label: str
    settings: Mapping[str, Any]  # strings from the command line are parsed by the config; YAML values are typed


@dataclass(frozen=True)
class GridAxis:
    """One dimension of the grid: a config key, or (in a sweep file) a name for several keys set together."""

    name: str
    values: tuple[GridValue, ...]
    source: str  # where it was given, for errors: "--grid" or the sweep file's path

    def keys(self) -> set[str]:
        return {key for value in self.values for key in value.settings}


@dataclass(frozen=True)
class SweepPoint:
    index: int
    values: tuple[tuple[str, str], ...]  # (axis name, value label), in axis order
    overrides: Mapping[str, Any]  # the config keys this point sets on top of the base config

    @property
    def label(self) -> str:
        return ", ".join(f"{axis}={label}" for axis, label in self.values)


@dataclass(frozen=True)
class SweepSpec:
    preset: str
    config_file: str | None
    base_overrides: Mapping[str, Any]  # --set
    axes: tuple[GridAxis, ...]
    description: str = ""

    def points(self) -> list[SweepPoint]:
        """Every combination of one value per axis (the first axis varies slowest)."""
        points = []
        for index, combo in enumerate(itertools.product(*(axis.values for axis in self.axes))):
            overrides: dict[str, Any] = {}
            for value in combo:
                overrides.update(value.settings)
            points.append(SweepPoint(index, tuple((axis.name, value.label) for axis, value in zip(self.axes, combo)),
                                     overrides))
        return points


@dataclass(frozen=True)
class PreparedSweep:
    """A validated sweep: its id, its points and each point's config (built in the order of `points`)."""

    spec: SweepSpec
    sweep_id: str
    points: tuple[SweepPoint, ...]
    configs: tuple[Any, ...] = field(repr=False)


def format_value(value: Any) -> str:
    """How a grid value is written in labels, results.csv and the sweep id ("16", "mlp+llm", "[1.0, 2.0]")."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_grid_flag(text: str) -> GridAxis:
    """`key=v1,v2,...` (or `key=[json, list]` when a value holds commas) -> an axis over one config key."""
    key, sep, values_text = text.partition("=")
    key, values_text = key.strip(), values_text.strip()
    if not sep or not key or not values_text:
        raise ValueError(f"--grid expects key=v1,v2,... (e.g. --grid eval_fid.t2i_num_steps=20,40), got '{text}'")
    if values_text.startswith("["):
        try:
            values = json.loads(values_text)
        except json.JSONDecodeError:
            raise ValueError(f"--grid {key}: '{values_text}' is not a JSON list; write the values as v1,v2 or as "
                             f"a JSON list such as [[1.0, 2.0], [4.0]]") from None
        if not isinstance(values, list):
            raise ValueError(f"--grid {key}: expected a JSON list of values, got '{values_text}'")
    else:
        values = [part.strip() for part in values_text.split(",")]
    if not values or any(isinstance(v, str) and not v for v in values):
        raise ValueError(f"--grid {key}: an empty value in '{values_text}'; give values like {key}=a,b")
    return _axis(key, [(format_value(v), {key: v}) for v in values], "--grid")


def load_grid_file(path: str | Path) -> tuple[list[GridAxis], str]:
    """A sweep file (YAML, JSON or TOML): `grid:` maps each axis to its values, `description:` says what it is.

    An axis is either a config key with a list of values, or a name with a mapping of labels to the settings that
    value makes (several keys set together, e.g. a decoder's architecture and its weights).
    """
    data = load_config_file(path)
    unknown = sorted(set(data) - set(GRID_FILE_KEYS))
    if unknown:
        raise ValueError(f"sweep file {path}: unknown key '{unknown[0]}'; valid keys: {', '.join(GRID_FILE_KEYS)}")
    grid = data.get("grid")
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"sweep file {path}: 'grid' must map each axis (a config key) to a list of its values")
    axes = []
    for name, values in grid.items():
        if isinstance(values, list):
            axes.append(_axis(name, [(format_value(v), {name: v}) for v in values], str(path)))
        elif isinstance(values, Mapping) and all(isinstance(v, Mapping) for v in values.values()):
            axes.append(_axis(name, [(str(label), dict(settings)) for label, settings in values.items()], str(path)))
        else:
            raise ValueError(f"sweep file {path}: axis '{name}' must be a list of values, or a mapping of labels to "
                             f"settings ({{label: {{config.key: value, ...}}}}), got {values!r}")
    return axes, str(data.get("description", ""))


def check_axes(axes: Sequence[GridAxis], base_overrides: Mapping[str, Any]) -> None:
    """Refuse what makes a grid ambiguous: no axis, an axis named twice, a key on two axes or also in --set."""
    if not axes:
        raise ValueError("a sweep needs at least one axis: --grid key=v1,v2 or --grid-file FILE")
    seen: dict[str, str] = {}
    for axis in axes:
        if axis.name in seen:
            raise ValueError(f"grid axis '{axis.name}' is given twice ({seen[axis.name]} and {axis.source}); "
                             f"give its values once")
        seen[axis.name] = axis.source
    owner: dict[str, str] = {}
    for axis in axes:
        for key in axis.keys():
            if key in owner:
                raise ValueError(f"config key '{key}' is set by two grid axes ('{owner[key]}' and '{axis.name}'); "
                                 f"set each key on one axis")
            owner[key] = axis.name
            if key in base_overrides:
                raise ValueError(f"config key '{key}' is both in --set and on grid axis '{axis.name}'; the grid "
                                 f"gives its values: drop the --set")


def prepare_sweep(spec: SweepSpec, build_config: Callable[[Mapping[str, Any]], Any]) -> PreparedSweep:
    """Build and check every point's config before anything runs; returns the sweep with its id.

    `build_config(overrides)` returns the config of the base settings plus `overrides` or raises ValueError
    (`vlv.config.load_config` for the pipeline).
    """
    check_axes(spec.axes, spec.base_overrides)
    base = build_config(dict(spec.base_overrides))
    for axis in spec.axes:  # each value on its own first: the error then names the one key or value at fault
        for value in axis.values:
            _build_or_explain(build_config, {**spec.base_overrides, **value.settings},
                              f"{_where(axis)} {axis.name}={value.label}")
    points = spec.points()
    configs = [_build_or_explain(build_config, {**spec.base_overrides, **point.overrides}, f"grid point {point.label}")
               for point in points]
    by_hash: dict[str, SweepPoint] = {}
    for point, config in zip(points, configs):
        same = by_hash.setdefault(config.config_hash(), point)
        if same is not point:
            raise ValueError(f"grid points '{same.label}' and '{point.label}' give the same configuration (the value "
                             f"repeats, equals the default spelled differently, or the key changes no step's output, "
                             f"like a port); drop one of them")
    return PreparedSweep(spec, sweep_id(spec, base.config_hash()), tuple(points), tuple(configs))


def sweep_id(spec: SweepSpec, base_config_hash: str) -> str:
    """`<preset>-<axis names>-<digest>`: readable, and the same for the same preset, base config and grid."""
    payload = json.dumps({
        "preset": spec.preset, "base": base_config_hash,
        "axes": [[axis.name, [[v.label, {k: format_value(x) for k, x in sorted(v.settings.items())}]
                              for v in axis.values]] for axis in spec.axes],
    }, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:10]
    names = "+".join(axis.name.rsplit(".", 1)[-1] for axis in spec.axes)
    readable = re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{spec.preset}-{names}")[:80]
    return f"{readable}-{digest}"


def _axis(name: str, values: list[tuple[str, Mapping[str, Any]]], source: str) -> GridAxis:
    if not name or not isinstance(name, str):
        raise ValueError(f"{source}: a grid axis needs a name (a config key such as train_stage1.model.num_queries)")
    if not values:
        raise ValueError(f"{source}: grid axis '{name}' has no values")
    labels = [label for label, _ in values]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"{source}: grid axis '{name}' lists the value {repeated[0]} twice; list each value once")
    return GridAxis(name, tuple(GridValue(label, dict(settings)) for label, settings in values), source)


def _where(axis: GridAxis) -> str:
    return "--grid" if axis.source == "--grid" else f"sweep file {axis.source}, axis"


def _build_or_explain(build_config: Callable[[Mapping[str, Any]], Any], overrides: Mapping[str, Any],
                      where: str) -> Any:
    try:
        return build_config(overrides)
    except ValueError as err:
        raise ValueError(f"{where}: {err} (fix the grid key or value; nothing was run)") from None
