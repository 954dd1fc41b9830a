"""Shared builders for envelope tests: a small federation and tools to take envelopes apart.

The federation (a Jobcenter that sends, an addiction counselling service and a social-psychiatric
service that receive, and a trust anchor that signs the key directory) has deterministic keys:
every seed is derived from a label, so the test vectors under tests/assets/vectors/ and the tests
see the same key ids. Validity periods are relative to an injectable `now`.

The frame tools (`split`, `Parts`, `resign`, `with_header`) let a test do what a malicious but
key-holding sender could do: change any byte and sign the result properly with a real key, so that
a check behind the signature check is reached rather than the signature check itself.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from bridge.crypto import Attachment, Keyring, PrivateKey, PublicKeyRecord
from bridge.crypto.envelope import SIGNATURE_CONTEXT, _seal_with, seal
from bridge.federation.directory import AgencyEntry, Directory, DirectoryBody, sign_directory

__all__ = [
    "CATEGORIES",
    "CONSENT",
    "DAY",
    "DROP",
    "MESSAGE_ID",
    "OTHER_CONTEXT",
    "PLAINTEXT",
    "PURPOSE",
    "RECIPIENTS",
    "REPLY_TO",
    "SENDER",
    "STRANGER",
    "T0",
    "WRAP_ENTRY_LEN",
    "Federation",
    "Parts",
    "build",
    "decode_header",
    "encode_header",
    "federation",
    "impostor",
    "resign",
    "seal_referral",
    "sections",
    "split",
    "test_seed",
    "with_header",
]

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: the verification time of the stored vectors
DAY = 86_400
SENDER = "jobcenter-unna"
RECIPIENTS = ("suchtberatung-unna", "spdi-unna")
# An agency with keys but no directory entry: its kids are unknown to everyone.
STRANGER = "klinik-dortmund"
FEDERATION_ID = "kreis-unna"

MESSAGE_ID = "7f3c8a52-1d4e-4b6f-9a2c-5e8d0b1f4a73"
REPLY_TO = "0b9e6d14-8c2a-4f57-b3e1-9d6a2c7f5e08"
CONSENT = "c-5d1f0a9e3b7c4e2a8f6d1b0c9e7a3f52"
PURPOSE = "addiction-counselling"
CATEGORIES = ("contact", "health")
# Synthetic: a body carries personal data in real use, so a vector must not look like any person.
PLAINTEXT = (
    b'{"kind":"referral","note":"synthetic test vector: no real person",'
    b'"reason":"counselling requested","contact":"by letter"}'
)
# A context string of another kind of signed document: its signatures must not verify here.
OTHER_CONTEXT = b"bridge/directory/v1"

_U32 = struct.Struct(">I")
_SIG_ED = 64
_SIG_ML = 3309
WRAP_ENTRY_LEN = 16 + 1120 + 48


def test_seed(label: str, length: int) -> bytes:
    """A seed derived from a label, so the federation is the same on every run."""
    return hashlib.shake_256(b"bridge/test-seed/v1/" + label.encode()).digest(length)


test_seed.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


# label -> (agency, use, not_before offset, not_after offset, revoked), offsets relative to now.
# Revoked keys start before the current ones so that no keyring ever picks one as current.
_KEYS: dict[str, tuple[str, str, int, int, bool]] = {
    "anchor": (FEDERATION_ID, "sign", -30 * DAY, 3650 * DAY, False),
    "jobcenter-unna/sign": (SENDER, "sign", -30 * DAY, 365 * DAY, False),
    "jobcenter-unna/enc": (SENDER, "enc", -30 * DAY, 365 * DAY, False),
    "jobcenter-unna/sign-expired": (SENDER, "sign", -400 * DAY, -30 * DAY, False),
    "jobcenter-unna/sign-revoked": (SENDER, "sign", -60 * DAY, 365 * DAY, True),
    "jobcenter-unna/sign-future": (SENDER, "sign", 30 * DAY, 400 * DAY, False),
    "suchtberatung-unna/sign": (RECIPIENTS[0], "sign", -30 * DAY, 365 * DAY, False),
    "suchtberatung-unna/enc": (RECIPIENTS[0], "enc", -30 * DAY, 365 * DAY, False),
    "suchtberatung-unna/enc-expired": (RECIPIENTS[0], "enc", -400 * DAY, -30 * DAY, False),
    "suchtberatung-unna/enc-revoked": (RECIPIENTS[0], "enc", -60 * DAY, 365 * DAY, True),
    "spdi-unna/sign": (RECIPIENTS[1], "sign", -30 * DAY, 365 * DAY, False),
    "spdi-unna/enc": (RECIPIENTS[1], "enc", -30 * DAY, 365 * DAY, False),
    "klinik-dortmund/sign": (STRANGER, "sign", -30 * DAY, 365 * DAY, False),
    "klinik-dortmund/enc": (STRANGER, "enc", -30 * DAY, 365 * DAY, False),
}
_NAMES = {
    SENDER: ("Jobcenter Kreis Unna", "jobcenter"),
    RECIPIENTS[0]: ("Suchtberatung Unna", "counselling"),
    RECIPIENTS[1]: ("Sozialpsychiatrischer Dienst Kreis Unna", "social-psychiatric-service"),
}


@dataclass(frozen=True)
class Federation:
    """Keys by label, the signed directory and the time it all holds at."""

    now: int
    keys: dict[str, PrivateKey]
    revoked: frozenset[str]
    directory_bytes: bytes
    directory: Directory

    @property
    def anchor(self) -> PrivateKey:
        return self.keys["anchor"]

    def key(self, label: str) -> PrivateKey:
        return self.keys[label]

    def record(self, label: str) -> PublicKeyRecord:
        return self.keys[label].public_record()

    def keyring(self, agency: str) -> Keyring:
        """Every private key of `agency`, expired and revoked ones included, as an adapter would."""
        return Keyring(agency, [k for k in self.keys.values() if k.agency == agency])

    def in_directory(self, label: str) -> bool:
        return self.keys[label].agency in _NAMES


@functools.lru_cache(maxsize=8)
def federation(now: int = T0) -> Federation:
    """The test federation with keys valid around `now` and a directory signed at `now`."""
    keys = {}
    for label, (agency, use, start, end, _) in _KEYS.items():
        seed = test_seed(label, 64 if use == "sign" else 32)
        keys[label] = PrivateKey(agency, use, seed, now + start, now + end)  # type: ignore[arg-type]
    revoked = frozenset(label for label, spec in _KEYS.items() if spec[4])
    body = DirectoryBody(
        v=1,
        federation=FEDERATION_ID,
        serial=1,
        issued_at=now - DAY,
        expires_at=now + 3650 * DAY,
        agencies=[
            AgencyEntry(
                id=agency,
                name=name,
                role=role,  # type: ignore[arg-type]
                keys=[k.public_record() for k in keys.values() if k.agency == agency],
            )
            for agency, (name, role) in _NAMES.items()
        ],
        revoked=sorted(keys[label].public_record().kid for label in revoked),
    )
    data = sign_directory(body, keys["anchor"])
    directory = Directory.load(data, keys["anchor"].public_record(), now=now)
    return Federation(now, keys, revoked, data, directory)


# -- building envelopes -----------------------------------------------------------------------


def seal_referral(
    fed: Federation,
    plaintext: bytes = PLAINTEXT,
    recipients: Iterable[str] = RECIPIENTS,
    **kwargs: Any,
) -> bytes:
    """An envelope exactly as an honest sender's adapter would seal it."""
    options: dict[str, Any] = {
        "message_type": "referral",
        "consent": CONSENT,
        "purpose": PURPOSE,
        "categories": list(CATEGORIES),
        "lifetime": 7 * DAY,
        "now": fed.now,
    }
    options.update(kwargs)
    return seal(
        plaintext,
        sender=fed.keyring(SENDER),
        recipients=list(recipients),
        directory=fed.directory,
        **options,
    )


def build(
    fed: Federation,
    plaintext: bytes = PLAINTEXT,
    *,
    signing: PrivateKey | None = None,
    recipients: Iterable[str | tuple[str, PublicKeyRecord]] = RECIPIENTS,
    content_keys: Iterable[bytes] | None = None,
    content_key: bytes = b"\x42" * 32,
    message_type: str = "referral",
    consent: str = CONSENT,
    purpose: str = PURPOSE,
    categories: Iterable[str] = CATEGORIES,
    iat: int | None = None,
    exp: int | None = None,
    reply_to: str | None = None,
    message_id: str = MESSAGE_ID,
    attachments: list[Attachment] | None = None,
) -> bytes:
    """An envelope built with `_seal_with`: anything a sender holding a real signing key can make.

    A recipient is an agency id (its current encryption key) or (agency id, key record). Each
    recipient gets `content_key` unless `content_keys` gives one per recipient.
    """
    rec: list[tuple[str, PublicKeyRecord]] = []
    for item in recipients:
        if isinstance(item, str):
            rec.append((item, fed.record(f"{item}/enc")))
        else:
            rec.append(item)
    keys = list(content_keys) if content_keys is not None else [content_key] * len(rec)
    at = fed.now - 60 if iat is None else iat
    return _seal_with(
        plaintext,
        message_type=message_type,
        signing=signing or fed.key(f"{SENDER}/sign"),
        recipient_keys=[(a, r, k) for (a, r), k in zip(rec, keys, strict=True)],
        consent=consent,
        purpose=purpose,
        categories=list(categories),
        iat=at,
        exp=at + 7 * DAY if exp is None else exp,
        reply_to=reply_to,
        message_id=message_id,
        attachments=attachments,
    )


def impostor(fed: Federation, label: str, claimed_agency: str) -> PrivateKey:
    """The key `label` presented as if it belonged to `claimed_agency` (its kid is unchanged)."""
    key = fed.key(label)
    return dataclasses.replace(key, agency=claimed_agency)


# -- taking envelopes apart -------------------------------------------------------------------


@dataclass(frozen=True)
class Parts:
    """An envelope's fields, read with the layout of docs/envelope.md (no bridge code involved).

    `assemble()` recomputes the three length prefixes from the sections unless `lengths` pins
    them, so that a test can change a section and still produce a well-framed envelope.
    """

    magic: bytes
    version: int
    suite: int
    kid: bytes
    header: bytes
    wraps: bytes
    body: bytes
    ed_sig: bytes
    ml_sig: bytes
    lengths: tuple[int, int, int] | None = None

    def signed(self) -> bytes:
        lengths = self.lengths or (len(self.header), len(self.wraps), len(self.body))
        return b"".join(
            (
                self.magic,
                bytes((self.version, self.suite)),
                self.kid,
                _U32.pack(lengths[0]),
                self.header,
                _U32.pack(lengths[1]),
                self.wraps,
                _U32.pack(lengths[2]),
                self.body,
            )
        )

    def assemble(self) -> bytes:
        return self.signed() + self.ed_sig + self.ml_sig

    def replace(self, **changes: Any) -> Parts:
        return dataclasses.replace(self, **changes)

    def wrap_list(self) -> list[bytes]:
        n = WRAP_ENTRY_LEN
        return [self.wraps[i : i + n] for i in range(0, len(self.wraps), n)]


def split(data: bytes) -> Parts:
    """Parse a well-framed envelope into its parts (raises on a badly framed one)."""
    pos = 22
    found = []
    for _ in range(3):
        (length,) = _U32.unpack_from(data, pos)
        found.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    if len(data) - pos != _SIG_ED + _SIG_ML:
        raise ValueError("not a well-framed envelope")
    return Parts(
        magic=data[:4],
        version=data[4],
        suite=data[5],
        kid=data[6:22],
        header=found[0],
        wraps=found[1],
        body=found[2],
        ed_sig=data[pos : pos + _SIG_ED],
        ml_sig=data[pos + _SIG_ED :],
    )


def sections(data: bytes) -> dict[str, tuple[int, int]]:
    """Byte ranges [start, end) of every field of a well-framed envelope, by name."""
    parts = split(data)
    spans: dict[str, tuple[int, int]] = {
        "magic": (0, 4),
        "version": (4, 5),
        "suite": (5, 6),
        "sender_kid": (6, 22),
    }
    pos = 22
    for name, section in (("header", parts.header), ("wraps", parts.wraps), ("body", parts.body)):
        spans[f"{name}_length"] = (pos, pos + 4)
        spans[name] = (pos + 4, pos + 4 + len(section))
        pos += 4 + len(section)
    spans["ed25519_signature"] = (pos, pos + _SIG_ED)
    spans["mldsa65_signature"] = (pos + _SIG_ED, pos + _SIG_ED + _SIG_ML)
    return spans


def resign(
    parts: Parts,
    key: PrivateKey,
    *,
    ed_context: bytes = SIGNATURE_CONTEXT,
    ml_context: bytes = SIGNATURE_CONTEXT,
    ed_key: PrivateKey | None = None,
    ml_key: PrivateKey | None = None,
) -> bytes:
    """Sign `parts` properly: with `key` (or one key per algorithm) under the given contexts."""
    signed = parts.signed()
    ed_sig, _ = (ed_key or key).signer().sign(ed_context, signed)
    _, ml_sig = (ml_key or key).signer().sign(ml_context, signed)
    return signed + ed_sig + ml_sig


def decode_header(raw: bytes) -> dict[str, Any]:
    """The header as a plain dict in wire order (untyped decoding; bin fields stay bytes)."""
    value = msgspec.msgpack.decode(raw)
    if not isinstance(value, dict):
        raise ValueError("header is not a map")
    return value


def encode_header(fields: dict[str, Any]) -> bytes:
    """Encode a header dict in its insertion order with minimal sizes: canonical if the dict is."""
    return msgspec.msgpack.encode(fields)


class _Drop:
    """A `with_header` value that removes the field; its repr is stable across processes."""

    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()


def with_header(
    fed: Federation,
    data: bytes,
    *,
    key: PrivateKey | None = None,
    raw: bytes | None = None,
    **changes: Any,
) -> bytes:
    """`data` with header fields changed (a value of `DROP` removes the field), re-signed.

    Re-signing with the sender's real key is what lets a test reach the header checks, which
    only run once the signatures verify. `raw` replaces the header bytes wholesale.
    """
    parts = split(data)
    if raw is None:
        fields = decode_header(parts.header)
        for name, value in changes.items():
            if value is DROP:
                fields.pop(name, None)
            else:
                fields[name] = value
        raw = encode_header(fields)
    return resign(parts.replace(header=raw), key or fed.key(f"{SENDER}/sign"))
