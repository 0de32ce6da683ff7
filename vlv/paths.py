"""Paths built from data stay under their root: one check for every such join.

Data names files in several places: a COCO `file_name`, a shard name read from a parquet, the folder named in
`loopback_site.json`, a step key. Any of them could hold `../../etc/passwd`, an absolute path or a NUL byte,
and a plain `root / value` would then read or write outside the store. Every join of a root with a value that
came from data goes through `safe_child` (local paths) or `child_uri` (local paths or fsspec URIs), which
refuse such values with a ValueError naming the value, the root and what is wrong.

The check is lexical on purpose: it judges the string the data supplied. Symbolic links inside a root were put
there by whoever set up the machine (e.g. a COCO image folder linked to a shared disk) and are followed.
"""

from __future__ import annotations

import re
from pathlib import Path

_SEPARATORS = re.compile(r"[/\\]")


def path_problem(value: object, *, single: bool = False) -> str | None:
    """Why `value` cannot be joined under a root (None if it can); `single`: it must be one name, no folders."""
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a string"
    if not value:
        return "is empty"
    if "\x00" in value:
        return "contains a NUL byte"
    if single and _SEPARATORS.search(value):
        return "contains a path separator where a single name is expected"
    if value.startswith(("/", "\\")):
        return "is absolute"
    if "://" in value:
        return "is a URL, not a relative path"
    parts = _SEPARATORS.split(value)
    if ".." in parts:
        return "contains a '..' component"
    if single and value == ".":
        return "is '.', not a name"
    return None


def check_relative(value: object, root: str | Path, what: str, *, single: bool = False) -> str:
    """`value` unchanged when it names something inside `root`; else a ValueError naming both."""
    problem = path_problem(value, single=single)
    if problem:
        raise ValueError(f"{what} {value!r} {problem}: it would leave {root}; refusing to use it as a path")
    return value  # type: ignore[return-value]  # path_problem returned None, so it is a str


def safe_child(root: str | Path, relative: str, what: str = "path from data", *, single: bool = False) -> Path:
    """`root / relative`, refusing a `relative` that is absolute, has `..`, a NUL, or (single) a separator."""
    return Path(root) / check_relative(relative, root, what, single=single)


def child_uri(root: str, relative: str, what: str = "path from data", *, single: bool = False) -> str:
    """`root/relative` for a local path or an fsspec URI (s3://...), with the checks of `safe_child`."""
    return f"{root.rstrip('/')}/{check_relative(relative, root, what, single=single)}"
