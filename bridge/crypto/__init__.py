"""Cryptographic recipes of bridge: keys, the sealed envelope, signed documents.

Only `bridge.crypto._primitives` touches `cryptography.hazmat`; this package's public surface is
what is re-exported here.
"""

from __future__ import annotations

from ._primitives import SigningPrivate, SigningPublic
from .attachments import (
    DEFAULT_CHUNK,
    Attachment,
    AttachmentSealer,
    ChunkReader,
    OpenedAttachment,
    check_name,
)
from .envelope import (
    DEFAULT_LIMITS,
    Header,
    Limits,
    Opened,
    Recipient,
    VerifiedEnvelope,
    new_content_key,
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
    "DEFAULT_CHUNK",
    "DEFAULT_LIMITS",
    "AgencyPublicKeys",
    "Attachment",
    "AttachmentSealer",
    "ChunkReader",
    "Header",
    "KeyLookup",
    "KeyUse",
    "Keyring",
    "Limits",
    "Opened",
    "OpenedAttachment",
    "PrivateKey",
    "PublicKeyRecord",
    "Recipient",
    "SigningPrivate",
    "SigningPublic",
    "VerifiedEnvelope",
    "check_name",
    "generate_key",
    "key_id",
    "kid_hex",
    "load_key_file",
    "new_content_key",
    "open_envelope",
    "seal",
    "sign_document",
    "verify",
    "verify_document",
    "write_key_file",
]
