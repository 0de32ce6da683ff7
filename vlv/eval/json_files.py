"""Strict reading of the JSON evaluation files (VQA, COCO captions): every error names file, entry and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file {path} not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}): "
                         f"{exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} file {path} is not UTF-8 text: {exc}") from exc


def top_level_list(data: Any, key: str, path: str | Path, what: str) -> list:
    """`data[key]`, which must be a list inside a JSON object."""
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path} is not a {what} file: expected a JSON object with a '{key}' list")
    return data[key]


def require_field(entry: Any, name: str, kind: type, where: str) -> Any:
    """`entry[name]`, which must exist and be of `kind` (a bool is not accepted as an int)."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if name not in entry:
        raise ValueError(f"{where}: missing field '{name}'")
    value = entry[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}: field '{name}' must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value
