"""Signed documents: a body signed with a composite (Ed25519 + ML-DSA-65) signing key.

Used for the key directory (and later for consent records). Layout, integers big-endian:

    magic (4) | version u8 (1) | signer kid (16) | u32 body length | body
    | Ed25519 signature (64) | ML-DSA-65 signature (3309)

Both signatures cover every byte before them, under a context string that names the document
kind, so a signature made for one kind never verifies as another.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from ..errors import MalformedEnvelope, SignatureInvalid, TooLarge
from . import _primitives as P
from .keys import KID_LEN, PrivateKey

__all__ = ["sign_document", "verify_document"]

_VERSION: Final = 1
_U32 = struct.Struct(">I")
_HEAD_LEN: Final = 4 + 1 + KID_LEN + 4
_SIGS_LEN: Final = P.ED25519_SIG_LEN + P.MLDSA65_SIG_LEN


def sign_document(magic: bytes, context: bytes, body: bytes, key: PrivateKey) -> bytes:
    if len(magic) != 4:
        raise ValueError("magic must be 4 bytes")
    signed = magic + bytes((_VERSION,)) + key.kid + _U32.pack(len(body)) + body
    ed_sig, ml_sig = key.signer().sign(context, signed)
    return signed + ed_sig + ml_sig


def verify_document(
    data: bytes,
    magic: bytes,
    context: bytes,
    public_key_for: Callable[[bytes], bytes | None],
    *,
    max_bytes: int,
) -> tuple[bytes, bytes]:
    """Return (signer kid, body) once both signatures verify; raise otherwise.

    `public_key_for(kid)` returns the signer's composite public key bytes, or None when the kid
    is not trusted.
    """
    if len(data) > max_bytes:
        raise TooLarge(f"document of {len(data)} bytes exceeds {max_bytes}")
    if len(data) < _HEAD_LEN + _SIGS_LEN or data[:4] != magic:
        raise MalformedEnvelope("not a signed document of the expected kind")
    if data[4] != _VERSION:
        raise MalformedEnvelope(f"document version {data[4]} is not supported")
    kid = data[5 : 5 + KID_LEN]
    (length,) = _U32.unpack_from(data, 5 + KID_LEN)
    if _HEAD_LEN + length + _SIGS_LEN != len(data):
        raise MalformedEnvelope("document length does not match its frame")
    public = public_key_for(kid)
    if public is None:
        raise SignatureInvalid("document is signed by an untrusted key")
    end = _HEAD_LEN + length
    signed = data[:end]
    ed_sig, ml_sig = data[end : end + P.ED25519_SIG_LEN], data[end + P.ED25519_SIG_LEN :]
    if not P.signing_public(public).verify(context, signed, ed_sig, ml_sig):
        raise SignatureInvalid("document signatures do not verify")
    return kid, data[_HEAD_LEN:end]
