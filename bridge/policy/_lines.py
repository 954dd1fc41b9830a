"""Where in a TOML file a table or key is: so a policy error can name the line at fault.

`tomllib` parses to plain dicts and forgets positions. Policy files are small and regular
(tables, arrays of tables, `key = value` lines), so one pass over the lines finds where each
table starts and where each of its keys is set. A key that cannot be placed (an inline table, a
dotted key) falls back to its table's line, and that to none: an error then names no line rather
than a wrong one.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["LineIndex"]

_ARRAY_TABLE: Final = re.compile(r"^\s*\[\[\s*([^\[\]]+?)\s*\]\]\s*(?:#.*)?$")
_TABLE: Final = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_KEY: Final = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")
_MULTILINE_STRING: Final = re.compile(r'"""|\'\'\'')

_Place = tuple[str, int]  # table name, index among tables of that name (0 for plain tables)


def _name(text: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in text.split("."))


class LineIndex:
    """Lines (1-based) of tables and keys in a TOML text."""

    def __init__(self, text: str) -> None:
        self._tables: dict[_Place, int] = {}
        self._keys: dict[tuple[str, int, str], int] = {}
        counts: dict[str, int] = {}
        place: _Place = ("", 0)
        in_string = False
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string:  # inside a multi-line string nothing is a table or a key
                in_string = len(_MULTILINE_STRING.findall(line)) % 2 == 0
                continue
            if m := _ARRAY_TABLE.match(line):
                name = _name(m[1])
                index = counts.get(name, 0)
                counts[name] = index + 1
                place = (name, index)
                self._tables[place] = number
            elif m := _TABLE.match(line):
                place = (_name(m[1]), 0)
                self._tables.setdefault(place, number)
            elif m := _KEY.match(line):
                self._keys.setdefault((place[0], place[1], m[1].strip("\"'")), number)
                in_string = len(_MULTILINE_STRING.findall(line)) % 2 == 1

    def table(self, name: str, index: int = 0) -> int | None:
        return self._tables.get((name, index))

    def key(self, table: str, key: str, index: int = 0) -> int | None:
        """The line setting `key` in `table` (its `index`-th occurrence), else the table's."""
        return self._keys.get((table, index, key)) or self.table(table, index)
