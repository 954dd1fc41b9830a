"""The local reference, sealed: a client's case file number never lies in NATS readable.

A consent's local reference (the agency's case file number, say) is personal data, and the
adapter's records live in its KV bucket on NATS: at the hub, unless the agency runs a leaf node,
where the hub's operators could read it. So the adapter keeps it there only sealed, with
AES-GCM under a key that exists only with the agency's adapters (bound to the consent id), and
finds the consents of one client through an HMAC of the reference, which without the key cannot
be guessed from a list of likely case numbers the way a plain hash could.

The key is the file `local_ref_key_file` of the adapter config (32 random bytes, mode 0600):
`bridge init` writes one into each agency's directory; an adapter that finds none creates it.
All instances of one agency's adapter need the same file, and it belongs in the agency's backup:
without it the references of its consents can no longer be read or found (the consents
themselves, in the registry, are unaffected).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._files import write_private_file
from ..errors import ConfigError

__all__ = ["LocalRefKey"]

_SIZE: Final = 32
_NONCE: Final = 12
_INFO: Final = b"bridge local reference v1"


class LocalRefKey:
    def __init__(self, secret: bytes) -> None:
        if len(secret) != _SIZE:
            raise ValueError("a local reference key is 32 bytes")
        derived = HKDF(algorithm=hashes.SHA256(), length=2 * _SIZE, salt=None, info=_INFO).derive(
            secret
        )
        self._aead = AESGCM(derived[:_SIZE])
        self._mac = derived[_SIZE:]

    def __repr__(self) -> str:
        return "LocalRefKey(<secret>)"

    @classmethod
    def load_or_create(cls, path: Path) -> LocalRefKey:
        """The key in `path`; a new one written there (0600) if there is none."""
        if not path.exists():
            try:
                write_private_file(path, os.urandom(_SIZE), overwrite=False)
            except ConfigError as exc:
                if exc.reason != "file.exists":
                    raise
                # Another instance created it just now: that one is the key, read below.
        try:
            mode = path.stat().st_mode
            secret = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the local reference key {path}: {exc.strerror}",
                reason="config.local_ref_key",
            ) from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"the local reference key {path} is readable by others; chmod 600 it",
                reason="config.local_ref_key",
            )
        if len(secret) != _SIZE:
            raise ConfigError(
                f"the local reference key {path} is not 32 bytes", reason="config.local_ref_key"
            )
        return cls(secret)

    def index(self, local_ref: str) -> str:
        """What the consents of one local reference are found under (hex)."""
        return hmac.new(self._mac, local_ref.encode(), hashlib.sha256).hexdigest()

    def seal(self, consent_id: str, local_ref: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, local_ref.encode(), consent_id.encode())
        return base64.b64encode(nonce + sealed).decode()

    def open(self, consent_id: str, sealed: str) -> str | None:
        """The reference, or None if it was sealed under another key (or altered)."""
        try:
            raw = base64.b64decode(sealed, validate=True)
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], consent_id.encode()).decode()
        except (ValueError, InvalidTag, UnicodeDecodeError):
            return None
