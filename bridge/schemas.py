"""JSON Schemas (2020-12) for every wire document, generated from the msgspec structs.

The structs are the source of truth; `schemas/*.json` are derived for the agencies' own systems
and checked in, and a test fails when they drift. Regenerate with

    python -m bridge.schemas schemas            # write
    python -m bridge.schemas --check schemas    # exit 1 and list the files that differ

`$id`s live under `https://bridge.example/schemas/`. `.example` is reserved (RFC 2606), so the
ids name the schemas without pretending they are served anywhere; a deployment that publishes them
changes `SCHEMA_BASE_URI` and regenerates.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

from .audit import AuditRecord
from .crypto.envelope import Header
from .wire import (
    ConsentRevoked,
    DeletionConfirmed,
    Feedback,
    Handover,
    Receipt,
    Referral,
    StatusEvent,
)

__all__ = [
    "DOCUMENTS",
    "SCHEMA_BASE_URI",
    "SCHEMA_DIALECT",
    "check",
    "generate",
    "main",
    "render",
    "schema",
    "write",
]

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URI: Final = "https://bridge.example/schemas/"

# One line per top-level document: file name (without ".json") and the struct it describes.
DOCUMENTS: Final[tuple[tuple[str, type], ...]] = (
    ("referral", Referral),
    ("handover", Handover),
    ("feedback", Feedback),
    ("receipt", Receipt),
    ("consent-revoked", ConsentRevoked),
    ("deletion-confirmed", DeletionConfirmed),
    ("status-event", StatusEvent),
    ("envelope-header", Header),
    ("audit-record", AuditRecord),
)


# Notes for readers of one schema that the struct's docstring does not give.
_COMMENTS: Final[dict[str, str]] = {
    "audit-record": (
        "One record of the audit stream BRIDGE_AUDIT (and one line of `bridge audit export`). "
        "`prev` is the SHA-256 of the exact bytes of the record before; docs/audit.md."
    ),
    "envelope-header": (
        "On the wire the header is canonical msgpack inside the signed envelope frame "
        "(docs/envelope.md). This schema describes the same fields in JSON form, byte strings "
        "as base64, for documentation and tooling."
    ),
}


def schema(name: str, struct: type) -> dict[str, Any]:
    """The schema document for `struct`: its own definition at the root, the rest in `$defs`."""
    (root,), defs = msgspec.json.schema_components([struct], ref_template="#/$defs/{name}")
    _clean_descriptions(defs)
    ref = root["$ref"]
    key = ref.removeprefix("#/$defs/")
    # Inline the root definition unless something refers back to it.
    if ref not in json.dumps(defs):
        root = defs.pop(key)
    document: dict[str, Any] = {"$schema": SCHEMA_DIALECT, "$id": f"{SCHEMA_BASE_URI}{name}.json"}
    if name in _COMMENTS:
        document["$comment"] = _COMMENTS[name]
    document.update(root)
    if defs:
        document["$defs"] = defs
    return document


def _clean_descriptions(node: object) -> None:
    """Dedent docstring descriptions, which msgspec copies with their source indentation."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                node[key] = inspect.cleandoc(value)
            else:
                _clean_descriptions(value)
    elif isinstance(node, list):
        for item in node:
            _clean_descriptions(item)


def render(name: str, struct: type) -> str:
    """The schema as text, byte-for-byte stable: sorted keys, two-space indent, final newline."""
    return json.dumps(schema(name, struct), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name -> content for every document in `DOCUMENTS`."""
    return {f"{name}.json": render(name, struct) for name, struct in DOCUMENTS}


def write(directory: Path) -> list[Path]:
    """Write every schema into `directory`; return the files whose content changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for filename, content in generate().items():
        path = directory / filename
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            path.write_text(content, encoding="utf-8")
            changed.append(path)
    return changed


def check(directory: Path) -> list[str]:
    """The file names in `directory` that differ from the generated schemas: changed, missing,
    or a `*.json` no document generates any more."""
    expected = generate()
    differ = []
    for filename, content in expected.items():
        path = directory / filename
        if not path.is_file() or path.read_text(encoding="utf-8") != content:
            differ.append(filename)
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    differ.extend(sorted(present - expected.keys()))
    return differ


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.schemas", description="Generate or check the JSON Schemas."
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if any file differs"
    )
    args = parser.parse_args(argv)
    if args.check:
        differ = check(args.directory)
        for filename in differ:
            print(f"differs: {args.directory / filename}", file=sys.stderr)
        if differ:
            print(
                f"regenerate with: python -m bridge.schemas {args.directory} "
                "(and delete files that no document generates)",
                file=sys.stderr,
            )
        return 1 if differ else 0
    for path in write(args.directory):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
