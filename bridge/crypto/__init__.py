"""Cryptographic recipes of bridge: keys, the sealed envelope, signed documents.

Only `bridge.crypto._primitives` touches `cryptography.hazmat`; this package's public surface is
what is re-exported here.
"""

from __future__ import annotations

from ._primitives import SigningPrivate, SigningPublic
from .envelope import (
    DEFAULT_LIMITS,
    Header,
    Limits,
    Opened,
    Recipient,
    VerifiedEnvelope,
    open_envelope,
    seal,
    verify,
)
from .keys import (
    AgencyPublicKeys,
    KeyLookup,
    Keyring,
    KeyUse,
    PrivateKey,
    PublicKeyRecord,
    generate_key,
    key_id,
    kid_hex,
    load_key_file,
    write_key_file,
)
from .signed import sign_document, verify_document

__all__ = [
    "DEFAULT_LIMITS",
    "AgencyPublicKeys",
    "Header",
    "KeyLookup",
    "KeyUse",
    "Keyring",
    "Limits",
    "Opened",
    "PrivateKey",
    "PublicKeyRecord",
    "Recipient",
    "SigningPrivate",
    "SigningPublic",
    "VerifiedEnvelope",
    "generate_key",
    "key_id",
    "kid_hex",
    "load_key_file",
    "open_envelope",
    "seal",
    "sign_document",
    "verify",
    "verify_document",
    "write_key_file",
]
