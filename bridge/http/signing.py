"""Signed webhook calls: the `Bridge-Signature` header and the shared secrets behind it.

`Bridge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, one `v1` per secret
(while a secret is being rotated out, the old one signs too). The adapters' webhooks and the
ops alert webhook sign this way, so a receiver checks both with one recipe (docs/adapter.md).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ..errors import ConfigError

__all__ = ["SIGNATURE_HEADER", "load_webhook_secret", "sign"]

SIGNATURE_HEADER: Final = "Bridge-Signature"
_MIN_SECRET: Final = 16
_MAX_SECRET: Final = 4096


def load_webhook_secret(path: Path) -> bytes:
    """The shared secret, whitespace-trimmed; at least 16 bytes."""
    try:
        data = path.read_bytes()[: _MAX_SECRET + 1]
    except OSError as exc:
        raise ConfigError(
            f"cannot read webhook secret {path}: {exc.strerror}", reason="config.missing"
        ) from exc
    secret = data.strip()
    if not _MIN_SECRET <= len(secret) <= _MAX_SECRET:
        raise ConfigError(
            f"webhook secret {path} must hold {_MIN_SECRET} to {_MAX_SECRET} bytes",
            reason="config.invalid",
        )
    return secret


def sign(secrets: Sequence[bytes], timestamp: int, body: bytes) -> str:
    """The `Bridge-Signature` value for `body` sent at `timestamp`: one `v1` per secret.

    Receivers accept a call if any `v1` verifies under any secret they hold, so during a
    rotation both the old and the new secret verify (docs/adapter.md has the recipe).
    """
    if not secrets:
        raise ValueError("at least one secret is needed")
    signed = f"{timestamp}.".encode() + body
    macs = (hmac.new(secret, signed, hashlib.sha256).hexdigest() for secret in secrets)
    return f"t={timestamp}," + ",".join(f"v1={mac}" for mac in macs)
