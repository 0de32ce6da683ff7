"""Typed dataclass config trees: built from nested mappings, or changed by dotted-key overrides, with strict keys
and types.

Why not just `dataclasses.replace`: users hand us strings (`--set download.image_size=64`) and YAML/JSON/TOML
files; every value must be checked against the type of the field it lands in, unknown keys must fail with the
valid choices, and every dataclass's `__post_init__` validation must run again on the result (once, on the final
values, so two overrides that only make sense together can be given in any order).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

T = TypeVar("T")

# Field metadata of a setting that changes how a step runs but never what it publishes (the port a tiny photo
# site is served on): `field(default=0, metadata=RUNTIME_ONLY)`. Step keys leave such fields out.
RUNTIME_ONLY = types.MappingProxyType({"vlv.runtime_only": True})
# Field metadata of a setting added after outputs were published with its default behaviour: while it holds its
# default it is left out of step keys (and config hashes), so those outputs stay cached; any other value is keyed
# like every setting. `field(default=None, metadata=KEYED_WHEN_SET)`.
KEYED_WHEN_SET = types.MappingProxyType({"vlv.keyed_when_set": True})


def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict of a dataclass tree (tuples become lists, so it round-trips through JSON)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def output_settings(config: Any) -> dict[str, Any]:
    """`to_dict` without the RUNTIME_ONLY fields, nor the KEYED_WHEN_SET fields at their default (at any depth):
    the settings a step's output depends on."""
    def strip(node: Any, data: Any) -> Any:
        if dataclasses.is_dataclass(node) and isinstance(data, dict):
            return {f.name: strip(getattr(node, f.name), data[f.name]) for f in dataclasses.fields(node)
                    if f.name in data and not f.metadata.get("vlv.runtime_only")
                    and not (f.metadata.get("vlv.keyed_when_set") and _at_default(node, f))}
        if isinstance(node, (list, tuple)) and isinstance(data, list):
            return [strip(item, value) for item, value in zip(node, data)]
        return data

    return strip(config, to_dict(config))


def _at_default(node: Any, f: dataclasses.Field) -> bool:
    if f.default is not dataclasses.MISSING:
        return getattr(node, f.name) == f.default
    if f.default_factory is not dataclasses.MISSING:
        return getattr(node, f.name) == f.default_factory()
    return False


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; used for MLflow params and for `--set` style reporting."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def build(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Construct dataclass `cls` from `data`, checking every key and value type (recursively)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"config section '{path or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"'{path}'" if path else "the root config"
        raise ValueError(
            f"unknown config key '{_join(path, unknown[0])}' in {where}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(hints[name], data[name], _join(path, name)) for name in fields if name in data}
    return cls(**kwargs)


def checked(config: T, path: str = "") -> T:
    """`config` built again from its own values, every value checked against its field's type (ints in float
    fields become floats, lists in tuple fields tuples) and every `__post_init__` run on the values it now holds."""
    cls = type(config)
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _coerce(hints[f.name], getattr(config, f.name), _join(path, f.name))
                  for f in dataclasses.fields(cls) if f.init})


def apply_overrides(config: T, overrides: Mapping[str, Any]) -> T:
    """`config` with dotted-key overrides (`{"download.image_size": "64"}`) set on it, checked (see `checked`).

    String values are parsed into the type of the field they target; other values (a config file's) are
    type-checked. `config` itself is left as it was: the nodes along each overridden path are copies.
    """
    updated = config
    for dotted, value in overrides.items():
        updated = _override(updated, dotted, value, parse_strings=True)
    return checked(updated)


def _override(config: T, dotted: str, value: Any, *, parse_strings: bool) -> T:
    """`config` with one dotted key set (a mapping given for a section sets each of its keys), unvalidated."""
    parts = dotted.split(".")
    node_cls: Any = type(config)
    for depth, part in enumerate(parts):
        valid = {f.name: f for f in dataclasses.fields(node_cls)} if dataclasses.is_dataclass(node_cls) else {}
        if part not in valid:
            prefix = ".".join(parts[:depth])
            choices = ", ".join(sorted(valid)) if valid else "(none: this is a value, not a section)"
            raise ValueError(f"unknown config key '{dotted}': no '{part}' in "
                             f"{prefix or 'the root config'}; valid keys there: {choices}")
        node_cls = typing.get_type_hints(node_cls)[part]
    field_type = node_cls
    if dataclasses.is_dataclass(field_type):
        if not isinstance(value, Mapping):
            raise ValueError(f"config key '{dotted}' is a section; set one of its keys instead "
                             f"(e.g. {dotted}.{dataclasses.fields(field_type)[0].name}=...)")
        for key, item in flatten(value).items():
            config = _override(config, f"{dotted}.{key}", item, parse_strings=False)
        return config
    if parse_strings and isinstance(value, str):
        value = _parse_override(field_type, value, dotted)
    return _with_value(config, parts, _coerce(field_type, value, dotted))


def _with_value(node: T, parts: list[str], value: Any) -> T:
    """A shallow copy of `node` with the attribute at `parts` set to `value` (copying each node on the way)."""
    head, *rest = parts
    updated = copy.copy(node)
    object.__setattr__(updated, head, _with_value(getattr(node, head), rest, value) if rest else value)
    return updated


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML, JSON or TOML config file into a nested mapping of overrides."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file '{path}' does not exist")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ValueError(f"config file '{path}' must end in .yaml, .yml, .json or .toml")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"config file '{path}' is not valid {suffix[1:].upper()}: {err}") from None
    except Exception as err:  # yaml.YAMLError without importing yaml at module level
        if type(err).__module__.startswith("yaml"):
            raise ValueError(f"config file '{path}' is not valid YAML: {err}") from None
        raise
    if not isinstance(data, dict):
        raise ValueError(f"config file '{path}' must hold a mapping of sections, got {type(data).__name__}")
    return data


def parse_set_flags(items: list[str]) -> dict[str, str]:
    """`["a.b=1", "c=x"]` -> `{"a.b": "1", "c": "x"}`, refusing items without '='."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value (e.g. download.image_size=64), got '{item}'")
        out[key.strip()] = value
    return out


# ---------------------------------------------------------------------------------------------------------


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _parse_override(tp: Any, text: str, path: str) -> Any:
    """Parse a `--set` string into type `tp` (nanoGPT rule: the override must match the default's type)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.strip().lower() in ("none", "null", ""):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse_override(arg, text, path)
            except ValueError:
                continue
        raise ValueError(f"config key '{path}' expects {_type_name(tp)}, got '{text}'")
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0]
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                items = json.loads(stripped)
            except json.JSONDecodeError:
                raise ValueError(f"config key '{path}' expects a list like [1, 2], got '{text}'") from None
            return [_coerce(inner, item, path) for item in items]  # type errors surface here, by key
        return [_parse_override(inner, part.strip(), path) for part in stripped.split(",") if part.strip()]
    if tp is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"config key '{path}' expects bool (true/false), got '{text}'")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"config key '{path}' expects int, got '{text}'") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"config key '{path}' expects float, got '{text}'") from None
    if origin is Literal:
        return _coerce(tp, text, path)
    if tp is str:
        return text
    if origin is dict:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise ValueError(f"config key '{path}' expects a JSON object like {{\"a\": \"b\"}}, got '{text}'") from None
        return _coerce(tp, value, path)
    raise ValueError(f"config key '{path}' of type {_type_name(tp)} cannot be set from the command line")


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check (and lightly normalise) an already-typed value against `tp`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return checked(value, path) if isinstance(value, tp) else build(tp, value, path)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ValueError(f"config key '{path}' must be {_type_name(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, path)
            except ValueError:
                continue
        raise ValueError(f"config key '{path}' expects {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{path}' expects {_type_name(tp)}, got {value!r}")
        inner = typing.get_args(tp)[0]
        items = [_coerce(inner, item, path) for item in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"config key '{path}' expects a mapping, got {value!r}")
        key_type, value_type = typing.get_args(tp) or (Any, Any)
        return {_coerce(key_type, k, path): _coerce(value_type, v, f"{path}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any:
        return value
    if isinstance(tp, type):
        if tp in (int, float) and isinstance(value, bool):
            raise ValueError(f"config key '{path}' expects {tp.__name__}, got {value!r}")
        if not isinstance(value, tp):
            raise ValueError(f"config key '{path}' expects {tp.__name__}, got {value!r}")
    return value
