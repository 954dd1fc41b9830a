"""Signed notices an agency sends to the audit writer about what happened on its side.

Adapters never write to the audit trail; a notice travels like a submission, on the agency's own
submit subject (which only its NATS identity may publish to), marked with the `Bridge-Notice`
header, and the broker records it. Its body is signed with the agency's signing key (Ed25519 and
ML-DSA-65, `bridge.crypto.signed`, context `bridge/notice/v1`), so the record rests on the
agency's signature, not only on its NATS identity. Today's only notice: an agency destroyed an
old private encryption key (crypto-shredding, `bridge keys shred`).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Final, Literal

import msgspec

from ..crypto import KeyLookup, PrivateKey, sign_document, verify_document
from ..errors import BridgeError, ProtocolError

__all__ = [
    "KEY_DESTROYED",
    "KeyDestroyed",
    "notice_message_id",
    "open_notice",
    "sign_notice",
]

MAGIC: Final = b"BRNT"
CONTEXT: Final = b"bridge/notice/v1"
MAX_NOTICE_BYTES: Final = 8 * 1024
KEY_DESTROYED: Final = "key-destroyed"
"""The `Bridge-Notice` header value of a key destruction notice."""


class KeyDestroyed(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`agency` destroyed its private encryption key `kid` (hex) at `at` (Unix seconds)."""

    v: int = 1
    kind: Literal["key-destroyed"] = "key-destroyed"
    agency: str
    kid: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$(?!\n)")]
    at: int


_decoder: Final = msgspec.json.Decoder(KeyDestroyed)


def notice_message_id(agency: str, kid: str) -> str:
    """A deterministic message id (UUIDv4 form) for the notice, so a resend is stored once."""
    digest = hashlib.sha256(f"bridge/notice/v1\x00{agency}\x00{kid}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def sign_notice(notice: KeyDestroyed, key: PrivateKey) -> bytes:
    return sign_document(MAGIC, CONTEXT, msgspec.json.encode(notice), key)


def open_notice(data: bytes, directory: KeyLookup, sender: str) -> KeyDestroyed:
    """Verify a notice from `sender` against the key directory; raise `ProtocolError`."""

    def key_for(kid: bytes) -> bytes | None:
        found = directory.key(kid)
        if found is None or found[0] != sender or found[1].use != "sign":
            return None
        if directory.is_revoked(kid):
            return None
        return found[1].public_bytes

    try:
        _, body = verify_document(data, MAGIC, CONTEXT, key_for, max_bytes=MAX_NOTICE_BYTES)
        notice = _decoder.decode(body)
    except BridgeError as exc:
        raise ProtocolError(
            f"notice does not verify ({exc.reason})", reason="notice.invalid"
        ) from exc
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ProtocolError("notice body is malformed", reason="notice.invalid") from None
    if notice.agency != sender:
        raise ProtocolError("notice names another agency", reason="notice.invalid")
    return notice
