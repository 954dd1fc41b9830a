"""A minimal TOML writer for the configs `bridge up` generates.

The standard library reads TOML but does not write it. The generated files are small and
regular (tables, arrays of tables, strings, integers, booleans, lists of strings), so a tiny
writer is enough; every file it produces is read back by the real loader before it is used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["render"]


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as a TOML value")


def _is_table(value: object) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: object) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(_is_table(v) for v in value)


def _key(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").isalnum() else json.dumps(name)


def _table(lines: list[str], path: list[str], table: Mapping[str, object]) -> None:
    for name, value in table.items():
        if not (_is_table(value) or _is_table_array(value)):
            lines.append(f"{_key(name)} = {_scalar(value)}")
    for name, value in table.items():
        if _is_table(value):
            assert isinstance(value, Mapping)
            lines.append("")
            lines.append(f"[{'.'.join(_key(p) for p in [*path, name])}]")
            _table(lines, [*path, name], value)
        elif _is_table_array(value):
            assert isinstance(value, list | tuple)
            for item in value:
                lines.append("")
                lines.append(f"[[{'.'.join(_key(p) for p in [*path, name])}]]")
                _table(lines, [*path, name], item)


def render(document: Mapping[str, object], header: str = "") -> str:
    """`document` as TOML text, with `header` as leading comment lines."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _table(lines, [], document)
    return "\n".join(lines).lstrip("\n") + "\n"
