"""Consent records and withdrawals: what a client allowed, signed by the agency that obtained it.

A consent record names permitted recipients, purposes, data categories and message types and
a validity period, and nothing about the client: no name, birth date, case number, pseudonym or
local reference. Its id is random. The agency signs it with its signing key the way the trust
anchor signs the key directory (`bridge.crypto.signed`: Ed25519 and ML-DSA-65 over the framed
body), under a context string of its own, so a consent signature never verifies as a directory,
an envelope or a withdrawal, nor the other way round.

A withdrawal is a second, separate signed document naming the consent; nothing is overwritten.

Both bodies are canonical msgpack: `verify_*` refuses any encoding but the one `sign_*` writes,
so one record has exactly one byte form and a digest of it identifies it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Final, TypeVar

import msgspec

from ..crypto import KeyLookup, PrivateKey, kid_hex, sign_document, verify_document
from ..errors import BridgeError, ConsentInvalid
from ..ids import AGENCY_ID_PATTERN, CODE_PATTERN, CONSENT_REF_PATTERN

__all__ = [
    "CONSENT_CONTEXT",
    "CONSENT_MAGIC",
    "MAX_CONSENT_BYTES",
    "WITHDRAWAL_CONTEXT",
    "WITHDRAWAL_MAGIC",
    "ConsentBody",
    "VerifiedConsent",
    "VerifiedWithdrawal",
    "WithdrawalBody",
    "new_consent_id",
    "sign_consent",
    "sign_withdrawal",
    "verify_consent",
    "verify_withdrawal",
]

CONSENT_MAGIC: Final = b"BRCR"
CONSENT_CONTEXT: Final = b"bridge/consent/v1"
WITHDRAWAL_MAGIC: Final = b"BRCW"
WITHDRAWAL_CONTEXT: Final = b"bridge/consent-withdrawal/v1"
MAX_CONSENT_BYTES: Final = 16 * 1024
MAX_LIST: Final = 16

_Agency = Annotated[str, msgspec.Meta(pattern=AGENCY_ID_PATTERN)]
_Code = Annotated[str, msgspec.Meta(pattern=CODE_PATTERN)]
_ConsentId = Annotated[str, msgspec.Meta(pattern=CONSENT_REF_PATTERN)]


class ConsentBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What the issuing agency signs. Times are Unix seconds; lists are sorted, no repeats."""

    v: int = 1
    id: _ConsentId
    issuer: _Agency
    recipients: Annotated[list[_Agency], msgspec.Meta(min_length=1, max_length=MAX_LIST)]
    purposes: Annotated[list[_Code], msgspec.Meta(min_length=1, max_length=MAX_LIST)]
    categories: Annotated[list[_Code], msgspec.Meta(min_length=1, max_length=MAX_LIST)]
    types: Annotated[list[_Code], msgspec.Meta(min_length=1, max_length=MAX_LIST)]
    valid_from: int
    valid_until: int
    issued_at: int


class WithdrawalBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The issuing agency's signed statement that consent `id` is withdrawn as of `at`."""

    v: int = 1
    id: _ConsentId
    issuer: _Agency
    at: int


@dataclass(frozen=True, slots=True)
class VerifiedConsent:
    """A consent record whose signature and form checked out; `raw` is the verified bytes."""

    raw: bytes
    body: ConsentBody
    kid: bytes = b""  # the signing key's id, to notice a revocation after it was verified

    @property
    def id(self) -> str:
        return self.body.id


@dataclass(frozen=True, slots=True)
class VerifiedWithdrawal:
    raw: bytes
    body: WithdrawalBody


_encoder: Final = msgspec.msgpack.Encoder()
_consent_decoder: Final = msgspec.msgpack.Decoder(ConsentBody)
_withdrawal_decoder: Final = msgspec.msgpack.Decoder(WithdrawalBody)


def new_consent_id() -> str:
    """A fresh random consent id: "c-" and 32 hex digits (128 random bits)."""
    return "c-" + secrets.token_hex(16)


def _check_list(items: Sequence[str], what: str) -> None:
    if list(items) != sorted(set(items)):
        raise ConsentInvalid(f"consent {what} must be sorted and without repeats")


def _check_consent(body: ConsentBody) -> None:
    if body.v != 1:
        raise ConsentInvalid("consent record version is not supported")
    for what in ("recipients", "purposes", "categories", "types"):
        _check_list(getattr(body, what), what)
    if body.issuer in body.recipients:
        raise ConsentInvalid("a consent cannot name its issuer as a recipient")
    if body.valid_until <= body.valid_from:
        raise ConsentInvalid("consent validity ends before it begins")


def _issuer_key(directory: KeyLookup, issuer: str) -> Callable[[bytes], bytes | None]:
    """`public_key_for` of `verify_document`: only an unrevoked signing key of `issuer`."""

    def lookup(kid: bytes) -> bytes | None:
        found = directory.key(kid)
        if found is None or directory.is_revoked(kid):
            return None
        agency, record = found
        if agency != issuer or record.use != "sign":
            return None
        return record.public_bytes

    return lookup


def sign_consent(body: ConsentBody, key: PrivateKey) -> bytes:
    """Check `body` as a verifier would, then sign it with the issuer's signing key."""
    raw = _encoder.encode(body)
    try:
        _consent_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConsentInvalid(f"consent record is invalid: {exc}") from None
    _check_consent(body)
    return sign_document(CONSENT_MAGIC, CONSENT_CONTEXT, raw, key)


def sign_withdrawal(body: WithdrawalBody, key: PrivateKey) -> bytes:
    raw = _encoder.encode(body)
    try:
        _withdrawal_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConsentInvalid(f"withdrawal is invalid: {exc}") from None
    return sign_document(WITHDRAWAL_MAGIC, WITHDRAWAL_CONTEXT, raw, key)


_B = TypeVar("_B", ConsentBody, WithdrawalBody)


def _verified(
    data: bytes,
    magic: bytes,
    context: bytes,
    decoder: msgspec.msgpack.Decoder[_B],
    directory: KeyLookup,
    issuer: str,
) -> tuple[bytes, _B]:
    """The body of a document signed by `issuer` with a key valid when it was signed."""
    try:
        kid, raw = verify_document(
            data, magic, context, _issuer_key(directory, issuer), max_bytes=MAX_CONSENT_BYTES
        )
    except BridgeError as exc:
        raise ConsentInvalid(f"consent document rejected: {exc.reason}") from None
    try:
        body = decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise ConsentInvalid("consent document does not decode") from None
    if _encoder.encode(body) != raw:
        raise ConsentInvalid("consent document is not canonically encoded")
    if body.issuer != issuer:
        raise ConsentInvalid("consent document names another issuer than its signer")
    found = directory.key(kid)
    signed_at = body.issued_at if isinstance(body, ConsentBody) else body.at
    if found is None or not found[1].valid_at(signed_at):
        raise ConsentInvalid(f"signing key {kid_hex(kid)} was not valid when it signed")
    return kid, body


def verify_consent(data: bytes, directory: KeyLookup, issuer: str) -> VerifiedConsent:
    """Verify a consent record found in `issuer`'s part of the registry; raise `ConsentInvalid`.

    The signature must be by a signing key of `issuer` that is in the directory, not revoked,
    and was valid at the record's `issued_at`; the body must be canonical and well formed.
    """
    kid, body = _verified(data, CONSENT_MAGIC, CONSENT_CONTEXT, _consent_decoder, directory, issuer)
    _check_consent(body)
    return VerifiedConsent(raw=data, body=body, kid=kid)


def verify_withdrawal(
    data: bytes, directory: KeyLookup, issuer: str, consent_id: str
) -> VerifiedWithdrawal:
    _, body = _verified(
        data, WITHDRAWAL_MAGIC, WITHDRAWAL_CONTEXT, _withdrawal_decoder, directory, issuer
    )
    if body.v != 1 or body.id != consent_id:
        raise ConsentInvalid("withdrawal names another consent")
    return VerifiedWithdrawal(raw=data, body=body)
