"""Files that are not UTF-8 are refused with the loader's own error, never a stray exception.

msgspec reports invalid UTF-8 inside a JSON or TOML string as UnicodeDecodeError, which is not a
msgspec.DecodeError, so every loader must translate both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.config import load_adapter_config, load_broker_config
from bridge.crypto import load_key_file
from bridge.errors import BridgeError, ConfigError, DirectoryError, KeyFileError
from bridge.federation import operator as federation
from bridge.federation.directory import load_anchor
from bridge.up.ports import load_ports

BAD_JSON = b'{"format": "\xff\xfe"}'
BAD_TOML = b'agency = "\xff"\n'


def _draft(path: Path) -> object:
    path.parent.mkdir(exist_ok=True)
    os.replace(path, path.parent / federation.DRAFT)
    return federation.load_draft(path.parent)


LOADERS: dict[str, tuple[bytes, Callable[[Path], object], type[BridgeError]]] = {
    "key file": (BAD_JSON, load_key_file, KeyFileError),
    "trust anchor": (BAD_JSON, load_anchor, DirectoryError),
    "public key bundle": (BAD_JSON, federation.load_bundle, BridgeError),
    "federation draft": (BAD_JSON, _draft, BridgeError),
    "ports record": (BAD_JSON, load_ports, ConfigError),
    "broker config": (BAD_TOML, load_broker_config, ConfigError),
    "adapter config": (BAD_TOML, load_adapter_config, ConfigError),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_invalid_utf8_is_refused_with_a_bridge_error(tmp_path: Path, name: str) -> None:
    content, load, error = LOADERS[name]
    path = tmp_path / "input"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
    with pytest.raises(error):
        load(path)
