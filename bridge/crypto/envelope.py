"""The sealed envelope: seal (sender), verify (broker, no decryption key) and open (recipient).

The byte layout is specified in docs/envelope.md; in short (integers big-endian):

    "BRDG" | version u8 | suite u8 | sender signing kid (16)
    | u32 header length | header (canonical msgpack map)
    | u32 wraps length  | wraps: per recipient, kid (16) || HPKE output (1168)
    | u32 body length   | body: AES-256-GCM ciphertext and tag
    | Ed25519 signature (64) | ML-DSA-65 signature (3309)

Both signatures cover every byte before them. Nothing inside the header is parsed before they
verify; the signing key is found by the kid in the fixed-size frame. Attachments travel beside
the envelope, encrypted in chunks under keys from its content key; the header lists them
(`bridge.crypto.attachments`).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec

from ..errors import (
    AttachmentTooLarge,
    DecryptionFailed,
    EnvelopeExpired,
    KeyCommitmentMismatch,
    KeyExpired,
    KeyMisuse,
    KeyRevoked,
    LifetimeTooLong,
    MalformedEnvelope,
    NotARecipient,
    NotYetValid,
    RecipientError,
    SignatureInvalid,
    TooLarge,
    UnknownKey,
    UnsupportedSuite,
    UnsupportedVersion,
)
from ..ids import (
    AGENCY_ID_PATTERN,
    CODE_PATTERN,
    CONSENT_REF_PATTERN,
    MESSAGE_ID_PATTERN,
    new_message_id,
)
from . import _primitives as P
from .attachments import Attachment, OpenedAttachment, valid_chunk_size
from .keys import KID_LEN, KeyLookup, Keyring, PrivateKey, PublicKeyRecord, kid_hex

__all__ = [
    "MAGIC",
    "SUITE",
    "VERSION",
    "Header",
    "Limits",
    "Opened",
    "Recipient",
    "VerifiedEnvelope",
    "new_content_key",
    "open_envelope",
    "seal",
    "verify",
]

MAGIC: Final = b"BRDG"
VERSION: Final = 1
# Suite 1: HPKE(ML-KEM-768+X25519, HKDF-SHA256, AES-256-GCM) wraps, AES-256-GCM body,
# Ed25519 + ML-DSA-65 signatures. There is no other suite, and so nothing to downgrade to.
SUITE: Final = 1
SIGNATURE_CONTEXT: Final = b"bridge/envelope/v1"
_WRAP_INFO: Final = b"bridge/v1 wrap"
_BODY_INFO: Final = b"bridge/v1 body"
_COMMIT_INFO: Final = b"bridge/v1 commitment"
_PREFIX_LEN: Final = 4 + 1 + 1 + KID_LEN
_WRAP_ENTRY_LEN: Final = KID_LEN + P.HPKE_WRAP_LEN
_SIGS_LEN: Final = P.ED25519_SIG_LEN + P.MLDSA65_SIG_LEN
_MIN_LEN: Final = _PREFIX_LEN + 4 + 4 + 4 + 16 + _SIGS_LEN
_CONTENT_KEY_LEN: Final = 32
_NONCE_LEN: Final = 12
_U32 = struct.Struct(">I")

_Agency = Annotated[str, msgspec.Meta(pattern=AGENCY_ID_PATTERN)]
_Code = Annotated[str, msgspec.Meta(pattern=CODE_PATTERN)]
_Kid = Annotated[bytes, msgspec.Meta(min_length=KID_LEN, max_length=KID_LEN)]
_MessageId = Annotated[str, msgspec.Meta(pattern=MESSAGE_ID_PATTERN)]


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Bounds that verify and open enforce. The broker and adapters share one set."""

    max_envelope_bytes: int = 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_recipients: int = 16
    max_categories: int = 16
    max_clock_skew: int = 300
    max_lifetime: int = 30 * 86400
    max_attachments: int = 16
    max_attachment_bytes: int = 100 * 1024 * 1024
    max_attachments_total: int = 250 * 1024 * 1024


DEFAULT_LIMITS: Final = Limits()


class Recipient(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    agency: _Agency
    kid: _Kid


class Header(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The signed cleartext header: metadata only, never personal data.

    Field order is the canonical encoding order; see docs/envelope.md.
    """

    v: int
    suite: int
    id: _MessageId
    type: Literal[
        "referral", "handover", "feedback", "receipt", "consent-revoked", "deletion-confirmed"
    ]
    sender: _Agency
    sender_kid: _Kid
    recipients: list[Recipient]
    consent: Annotated[str, msgspec.Meta(pattern=CONSENT_REF_PATTERN)]
    purpose: _Code
    categories: list[_Code]
    iat: int
    exp: int
    clen: int
    commit: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    reply_to: _MessageId | None = None
    attachments: list[Attachment] = []


_header_encoder = msgspec.msgpack.Encoder()
_OPTIONAL_FIELDS: Final[dict[str, object]] = {"reply_to": None, "attachments": []}


def _encode_header(header: Header) -> bytes:
    """The canonical encoding: declared order, optional fields omitted when absent.

    Through a dict rather than the struct: msgspec writes a struct of more than 15 fields with
    omitted defaults as a map16 whatever it holds, where canonical msgpack needs a fixmap.
    """
    fields = {
        name: value
        for name in Header.__struct_fields__
        if (value := getattr(header, name)) != _OPTIONAL_FIELDS.get(name, ...)
    }
    return _header_encoder.encode(fields)


_header_decoder = msgspec.msgpack.Decoder(Header)


@dataclass(frozen=True)
class VerifiedEnvelope:
    """An envelope whose signatures, keys and header checked out at `verified_at`.

    `raw` is the exact bytes that were verified; forward those, never a re-encoding.
    """

    raw: bytes
    header: Header
    header_hash: bytes
    sender_key: PublicKeyRecord
    verified_at: int

    @property
    def message_id(self) -> str:
        return self.header.id

    def __repr__(self) -> str:
        h = self.header
        return (
            f"VerifiedEnvelope(id={h.id}, type={h.type}, sender={h.sender}, "
            f"recipients={[r.agency for r in h.recipients]}, bytes={len(self.raw)})"
        )


@dataclass(frozen=True, repr=False)
class Opened:
    """A verified envelope, its plaintext body and its attachments' names and keys.

    Personal data: never log the plaintext or an attachment's name.
    """

    envelope: VerifiedEnvelope
    plaintext: bytes
    attachments: tuple[OpenedAttachment, ...] = ()

    @property
    def header(self) -> Header:
        return self.envelope.header

    def __repr__(self) -> str:
        return (
            f"Opened({self.envelope!r}, plaintext=<{len(self.plaintext)} bytes>, "
            f"attachments={len(self.attachments)})"
        )


# -- key schedule -----------------------------------------------------------------------------


def new_content_key() -> bytes:
    """A fresh content key: one per envelope, and its attachments' keys derive from it."""
    return P.random_bytes(_CONTENT_KEY_LEN)


def _body_key_nonce(content_key: bytes) -> tuple[bytes, bytes]:
    okm = P.hkdf_sha256(content_key, _BODY_INFO, _CONTENT_KEY_LEN + _NONCE_LEN)
    return okm[:_CONTENT_KEY_LEN], okm[_CONTENT_KEY_LEN:]


def _commitment(content_key: bytes) -> bytes:
    return P.hkdf_sha256(content_key, _COMMIT_INFO, 32)


def _wrap_info(header_hash: bytes, kid: bytes) -> bytes:
    return _WRAP_INFO + header_hash + kid


# -- seal -------------------------------------------------------------------------------------


def seal(
    plaintext: bytes,
    *,
    message_type: str,
    sender: Keyring,
    recipients: list[str],
    directory: KeyLookup,
    consent: str,
    purpose: str,
    categories: list[str],
    lifetime: int,
    reply_to: str | None = None,
    message_id: str | None = None,
    now: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
    content_key: bytes | None = None,
    attachments: Sequence[Attachment] = (),
) -> bytes:
    """Encrypt `plaintext` for `recipients` (agency ids), sign as `sender`; return the bytes.

    `attachments` are the header entries of attachments already encrypted under
    `content_key` (`AttachmentSealer`); without attachments the content key is drawn here.
    The result is checked with `verify()` before it is returned, so a sealed envelope that a
    broker would reject is never produced.
    """
    if len(recipients) > limits.max_recipients:
        # Checked here because verify() would see the oversized wraps section first and call
        # the envelope malformed, which says nothing useful to the sender.
        raise RecipientError(
            f"at most {limits.max_recipients} recipients", reason="envelope.too_many_recipients"
        )
    at = int(time.time()) if now is None else now
    signing = sender.current_published("sign", at, directory)
    keys = [(agency, directory.current_key(agency, "enc", at)) for agency in recipients]
    if content_key is None:
        content_key = new_content_key()
    elif len(content_key) != _CONTENT_KEY_LEN:
        raise ValueError("a content key is 32 bytes")
    data = _seal_with(
        plaintext,
        message_type=message_type,
        signing=signing,
        recipient_keys=[(a, k, content_key) for a, k in keys],
        consent=consent,
        purpose=purpose,
        categories=categories,
        iat=at,
        exp=at + lifetime,
        reply_to=reply_to,
        message_id=message_id or new_message_id(),
        attachments=list(attachments),
    )
    verify(data, directory, now=at, limits=limits)
    return data


def _seal_with(
    plaintext: bytes,
    *,
    message_type: str,
    signing: PrivateKey,
    recipient_keys: list[tuple[str, PublicKeyRecord, bytes]],
    consent: str,
    purpose: str,
    categories: list[str],
    iat: int,
    exp: int,
    reply_to: str | None,
    message_id: str,
    attachments: list[Attachment] | None = None,
) -> bytes:
    # NOTE: each recipient carries its own content key so that tests can build the malicious
    # "different keys for different recipients" envelope; `seal()` always passes one key.
    body_content_key = recipient_keys[0][2] if recipient_keys else P.random_bytes(32)
    header = Header(
        v=VERSION,
        suite=SUITE,
        id=message_id,
        # Not checked here: verify() refuses an unknown type, and tests seal one on purpose.
        type=message_type,  # type: ignore[arg-type]
        sender=signing.agency,
        sender_kid=signing.kid,
        recipients=[Recipient(agency, key.kid_bytes) for agency, key, _ in recipient_keys],
        consent=consent,
        purpose=purpose,
        categories=list(categories),
        iat=iat,
        exp=exp,
        clen=len(plaintext) + 16,
        commit=_commitment(body_content_key),
        reply_to=reply_to,
        attachments=attachments or [],
    )
    header_bytes = _encode_header(header)
    header_hash = P.sha256(header_bytes)
    wraps = b"".join(
        key.kid_bytes
        + P.encryption_public(key.public_bytes).wrap(ck, _wrap_info(header_hash, key.kid_bytes))
        for _, key, ck in recipient_keys
    )
    body_key, nonce = _body_key_nonce(body_content_key)
    ciphertext = P.aead_seal(body_key, nonce, plaintext, header_hash)
    signed = b"".join(
        (
            MAGIC,
            bytes((VERSION, SUITE)),
            signing.kid,
            _U32.pack(len(header_bytes)),
            header_bytes,
            _U32.pack(len(wraps)),
            wraps,
            _U32.pack(len(ciphertext)),
            ciphertext,
        )
    )
    ed_sig, ml_sig = signing.signer().sign(SIGNATURE_CONTEXT, signed)
    return signed + ed_sig + ml_sig


# -- verify -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Frame:
    kid: bytes
    header: bytes
    wraps: bytes
    ciphertext: bytes
    signed: bytes
    ed_sig: bytes
    ml_sig: bytes


def _parse_frame(data: bytes, limits: Limits) -> _Frame:
    if len(data) > limits.max_envelope_bytes:
        raise TooLarge(f"envelope of {len(data)} bytes exceeds {limits.max_envelope_bytes}")
    if len(data) < _MIN_LEN:
        raise MalformedEnvelope("envelope is shorter than the smallest possible one")
    if data[:4] != MAGIC:
        raise MalformedEnvelope("not a bridge envelope (bad magic)")
    if data[4] != VERSION:
        raise UnsupportedVersion(f"envelope version {data[4]} is not supported")
    if data[5] != SUITE:
        raise UnsupportedSuite(f"envelope suite {data[5]} is not supported")
    kid = data[6:_PREFIX_LEN]
    end = len(data) - _SIGS_LEN
    pos = _PREFIX_LEN
    sections = []
    for name, bound in (
        ("header", limits.max_header_bytes),
        ("wraps", limits.max_recipients * _WRAP_ENTRY_LEN),
        ("body", limits.max_envelope_bytes),
    ):
        if pos + 4 > end:
            raise MalformedEnvelope(f"envelope truncated before the {name} length")
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        if length > bound:
            raise MalformedEnvelope(f"{name} length {length} exceeds its limit {bound}")
        if pos + length > end:
            raise MalformedEnvelope(f"envelope truncated inside the {name}")
        sections.append(data[pos : pos + length])
        pos += length
    if pos != end:
        raise MalformedEnvelope("envelope has trailing bytes, or signatures are missing")
    header, wraps, ciphertext = sections
    return _Frame(
        kid=kid,
        header=header,
        wraps=wraps,
        ciphertext=ciphertext,
        signed=data[:end],
        ed_sig=data[end : end + P.ED25519_SIG_LEN],
        ml_sig=data[end + P.ED25519_SIG_LEN :],
    )


def _checked_key(
    directory: KeyLookup, kid: bytes, use: str, agency: str | None, now: int
) -> tuple[str, PublicKeyRecord]:
    found = directory.key(kid)
    if found is None:
        raise UnknownKey(f"key {kid_hex(kid)} is not in the directory")
    owner, record = found
    if record.use != use:
        raise KeyMisuse(f"key {kid_hex(kid)} is an {record.use} key, used as {use}")
    if agency is not None and owner != agency:
        raise KeyMisuse(f"key {kid_hex(kid)} belongs to another agency")
    if directory.is_revoked(kid):
        raise KeyRevoked(f"key {kid_hex(kid)} is revoked")
    if not record.valid_at(now):
        raise KeyExpired(f"key {kid_hex(kid)} is not valid now")
    return owner, record


def verify(
    data: bytes,
    directory: KeyLookup,
    *,
    now: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifiedEnvelope:
    """Check everything that can be checked without a decryption key; raise or return.

    Order: size, frame, version and suite, the sender's key, both signatures, then (and only
    then) the header's encoding and every rule about its fields.
    """
    at = int(time.time()) if now is None else now
    return _verify(bytes(data), directory, at, limits)[0]


def _verify(
    data: bytes, directory: KeyLookup, at: int, limits: Limits
) -> tuple[VerifiedEnvelope, _Frame]:
    frame = _parse_frame(data, limits)
    sender_agency, sender_key = _checked_key(directory, frame.kid, "sign", None, at)
    signer = P.signing_public(sender_key.public_bytes)
    if not signer.verify(SIGNATURE_CONTEXT, frame.signed, frame.ed_sig, frame.ml_sig):
        raise SignatureInvalid("envelope signatures do not verify")
    header = _decode_header(frame.header)
    _check_header(header, frame, sender_agency, directory, at, limits)
    envelope = VerifiedEnvelope(
        raw=data,
        header=header,
        header_hash=P.sha256(frame.header),
        sender_key=sender_key,
        verified_at=at,
    )
    return envelope, frame


def _decode_header(raw: bytes) -> Header:
    try:
        header = _header_decoder.decode(raw)
    # msgspec reports a str that is not valid UTF-8 as UnicodeDecodeError, not DecodeError.
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedEnvelope(f"header does not decode: {exc}") from exc
    # The signer's encoder is canonical; anything else (duplicate keys, other field order,
    # non-minimal integers, explicit nulls) is refused so that every reader sees one header.
    if _encode_header(header) != raw:
        raise MalformedEnvelope("header is not canonically encoded")
    return header


def _check_header(
    header: Header,
    frame: _Frame,
    sender_agency: str,
    directory: KeyLookup,
    now: int,
    limits: Limits,
) -> None:
    if header.v != VERSION or header.suite != SUITE:
        raise MalformedEnvelope("header version or suite disagrees with the frame")
    # Ids, codes, the consent reference and the type were checked by the Header struct's
    # patterns and Literal while decoding (spec steps 11 and 12, done in step 9).
    if header.sender_kid != frame.kid:
        raise MalformedEnvelope("header sender key id disagrees with the frame")
    if header.sender != sender_agency:
        raise KeyMisuse("the signing key belongs to another agency than the sender")
    if not header.categories or len(header.categories) > limits.max_categories:
        raise MalformedEnvelope(f"data categories must name 1 to {limits.max_categories} codes")
    if len(set(header.categories)) != len(header.categories):
        raise MalformedEnvelope("data categories repeat a code")
    recipients = header.recipients
    if not recipients:
        raise RecipientError("envelope has no recipients", reason="envelope.no_recipients")
    if len(recipients) > limits.max_recipients:
        raise RecipientError(
            f"envelope has more than {limits.max_recipients} recipients",
            reason="envelope.too_many_recipients",
        )
    if len({r.agency for r in recipients}) != len(recipients):
        raise RecipientError(
            "envelope names a recipient twice", reason="envelope.duplicate_recipient"
        )
    for recipient in recipients:
        if not directory.has_agency(recipient.agency):
            raise RecipientError(
                "envelope names an agency the directory does not know",
                reason="envelope.unknown_recipient",
            )
        _checked_key(directory, recipient.kid, "enc", recipient.agency, now)
    if len(frame.wraps) != len(recipients) * _WRAP_ENTRY_LEN:
        raise MalformedEnvelope("number of key wraps differs from number of recipients")
    for index, recipient in enumerate(recipients):
        offset = index * _WRAP_ENTRY_LEN
        if frame.wraps[offset : offset + KID_LEN] != recipient.kid:
            raise MalformedEnvelope("key wraps are not in recipient order")
    if header.clen != len(frame.ciphertext) or header.clen < 16:
        raise MalformedEnvelope("body length differs from the header's")
    if header.iat > now + limits.max_clock_skew:
        raise NotYetValid("envelope is issued too far in the future")
    if header.exp <= header.iat:
        raise MalformedEnvelope("envelope expires before it is issued")
    if header.exp - header.iat > limits.max_lifetime:
        raise LifetimeTooLong("envelope lifetime exceeds the allowed maximum")
    if header.exp <= now:
        raise EnvelopeExpired("envelope has expired")
    _check_attachments(header.attachments, limits)


def _check_attachments(attachments: list[Attachment], limits: Limits) -> None:
    if len(attachments) > limits.max_attachments:
        raise AttachmentTooLarge(
            f"more than {limits.max_attachments} attachments", reason="attachment.too_many"
        )
    for attachment in attachments:
        if not valid_chunk_size(attachment.chunk):
            raise MalformedEnvelope("an attachment's chunk size is not allowed")
        if attachment.size > limits.max_attachment_bytes:
            raise AttachmentTooLarge(
                f"an attachment exceeds {limits.max_attachment_bytes} bytes",
                reason="attachment.too_large",
            )
    if sum(a.size for a in attachments) > limits.max_attachments_total:
        raise AttachmentTooLarge(
            f"the attachments exceed {limits.max_attachments_total} bytes together",
            reason="attachment.total_too_large",
        )


# -- open -------------------------------------------------------------------------------------


def open_envelope(
    data: bytes,
    keyring: Keyring,
    directory: KeyLookup,
    *,
    now: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Opened:
    """Verify, then decrypt as `keyring`'s agency; every recipient gets the same plaintext."""
    at = int(time.time()) if now is None else now
    envelope, frame = _verify(bytes(data), directory, at, limits)
    header = envelope.header
    index = next((i for i, r in enumerate(header.recipients) if r.agency == keyring.agency), None)
    if index is None:
        raise NotARecipient("this agency is not a recipient of the envelope")
    recipient = header.recipients[index]
    key = keyring.decryption_key(recipient.kid, at)
    if key is None:
        raise UnknownKey("the envelope is sealed to a key this agency does not hold")
    offset = index * _WRAP_ENTRY_LEN + KID_LEN
    wrapped = frame.wraps[offset : offset + P.HPKE_WRAP_LEN]
    content_key = key.decrypter().unwrap(wrapped, _wrap_info(envelope.header_hash, recipient.kid))
    if content_key is None or len(content_key) != _CONTENT_KEY_LEN:
        raise DecryptionFailed("the key wrap does not open")
    if _commitment(content_key) != header.commit:
        raise KeyCommitmentMismatch("the content key differs from the one the header commits to")
    body_key, nonce = _body_key_nonce(content_key)
    plaintext = P.aead_open(body_key, nonce, frame.ciphertext, envelope.header_hash)
    if plaintext is None:
        raise DecryptionFailed("the body does not decrypt")
    attachments = tuple(
        OpenedAttachment.open(content_key, index, entry)
        for index, entry in enumerate(header.attachments)
    )
    return Opened(envelope=envelope, plaintext=plaintext, attachments=attachments)
