"""Regenerate the envelope test vectors under tests/assets/vectors/ (`make vectors`).

Keys come from fixed seeds and the clock is fixed (tests/envelope_helpers.py: T0), so the key
ids, public keys, directory body, headers and body ciphertexts come out the same on every run.
HPKE encapsulation and ML-DSA signing are randomized inside `cryptography`, so the wraps and
signatures, and with them the envelope bytes, differ from run to run: the files are generated
once and committed, and this script rewrites all of them.

Each negative vector is a `.bin` under negative/ with an entry in negative.json naming the check
(`verify`, or `open` as a given agency), the time, any non-default limits, and the exact error
type and reason code that bridge must raise. docs/envelope.md describes the files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envelope_helpers import (
    CONSENT,
    DAY,
    DROP,
    MESSAGE_ID,
    OTHER_CONTEXT,
    PLAINTEXT,
    PURPOSE,
    RECIPIENTS,
    SENDER,
    STRANGER,
    T0,
    Federation,
    build,
    decode_header,
    federation,
    impostor,
    resign,
    sections,
    split,
    with_header,
)

from bridge import errors
from bridge.crypto import open_envelope, verify
from bridge.crypto.envelope import DEFAULT_LIMITS, Limits

OUT = Path(__file__).resolve().parent / "vectors"
CONTENT_KEY = bytes(range(32))
OTHER_CONTENT_KEY = bytes(range(32, 64))
FEEDBACK_ID = "3e6b1f0a-7c2d-4a95-8e4b-0f1d2c3b4a59"
FEEDBACK_PLAINTEXT = b'{"kind":"feedback","note":"synthetic test vector","status":"taken-up"}'


@dataclass
class Negative:
    name: str
    about: str
    error: type[errors.BridgeError]
    data: bytes | None  # None: reuse `file`
    check: str = "verify"
    as_agency: str | None = None
    now: int = T0
    limits: dict[str, int] = field(default_factory=dict)
    reason: str | None = None
    file: str | None = None
    opens_for: list[str] = field(default_factory=list)


def _hexify(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [_hexify(v) for v in value]
    if isinstance(value, dict):
        return {k: _hexify(v) for k, v in value.items()}
    return value


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    # RFC 5869 with no salt, written out so the JSON's intermediate values do not come from
    # the code under test.
    import hmac

    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1 :]


def _middle(data: bytes, name: str) -> int:
    start, end = sections(data)[name]
    return (start + end - 1) // 2


def _positive(
    fed: Federation, name: str, data: bytes, content_key: bytes, plaintext: bytes
) -> None:
    parts = split(data)
    header = decode_header(parts.header)
    body_okm = _hkdf(content_key, b"bridge/v1 body", 44)
    recipients = {}
    for r in header["recipients"]:
        opened = open_envelope(data, fed.keyring(r["agency"]), fed.directory, now=T0)
        assert opened.plaintext == plaintext
        recipients[r["agency"]] = {"kid": r["kid"].hex(), "plaintext_hex": plaintext.hex()}
    (OUT / f"{name}.bin").write_bytes(data)
    document = {
        "file": f"{name}.bin",
        "verify_at": T0,
        "size": len(data),
        "frame": {
            "magic": parts.magic.decode(),
            "version": parts.version,
            "suite": parts.suite,
            "sender_kid": parts.kid.hex(),
            "header_length": len(parts.header),
            "wraps_length": len(parts.wraps),
            "body_length": len(parts.body),
        },
        "header_bytes_fields": ["sender_kid", "recipients[].kid", "commit"],
        "header": _hexify(header),
        "header_hex": parts.header.hex(),
        "header_sha256": hashlib.sha256(parts.header).hexdigest(),
        "key_schedule": {
            "content_key": content_key.hex(),
            "body_key": body_okm[:32].hex(),
            "body_nonce": body_okm[32:].hex(),
            "commit": _hkdf(content_key, b"bridge/v1 commitment", 32).hex(),
        },
        "plaintext_hex": plaintext.hex(),
        "plaintext_utf8": plaintext.decode(),
        "recipients": recipients,
    }
    _write_json(OUT / f"{name}.json", document)


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def _federation_json(fed: Federation) -> dict[str, Any]:
    keys = []
    for label, key in fed.keys.items():
        keys.append(
            {
                "label": label,
                "agency": key.agency,
                "use": key.use,
                "seed_hex": key.seed.hex(),
                "kid": key.public_record().kid,
                "public_base64": base64.b64encode(key.public_bytes).decode(),
                "not_before": key.not_before,
                "not_after": key.not_after,
                "in_directory": label != "anchor" and fed.in_directory(label),
                "revoked": label in fed.revoked,
            }
        )
    return {
        "about": (
            "Test federation: private seeds are published on purpose, never use them. "
            "Signing seeds are Ed25519 seed (32) || ML-DSA-65 seed (32); encryption seeds are "
            "X-Wing seeds (32). Public keys: Ed25519 (32) || ML-DSA-65 (1952), or "
            "ML-KEM-768 (1184) || X25519 (32)."
        ),
        "now": fed.now,
        "directory_file": "directory.bin",
        "anchor_file": "anchor.json",
        "keys": keys,
    }


def _negatives(fed: Federation, ok: bytes) -> list[Negative]:
    sign = fed.key(f"{SENDER}/sign")
    spdi_sign = fed.key("spdi-unna/sign")
    parts = split(ok)
    header = decode_header(parts.header)
    first, second = parts.wrap_list()
    other = build(fed, content_key=OTHER_CONTENT_KEY, message_id=FEEDBACK_ID)
    other_first = split(other).wrap_list()[0]
    raw = parts.header
    n: list[Negative] = []

    def add(
        name: str, about: str, error: type[errors.BridgeError], data: bytes | None, **kw: Any
    ) -> None:
        n.append(Negative(name, about, error, data, **kw))

    M, S = errors.MalformedEnvelope, errors.SignatureInvalid

    # -- the frame, before any signature is checked
    add("frame-empty", "no bytes at all", M, b"")
    add("frame-prefix-only", "only the 22-byte prefix", M, ok[:22])
    add("frame-bad-magic", "magic BRDX instead of BRDG", M, b"BRDX" + ok[4:])
    add(
        "frame-directory",
        "a signed key directory (magic BRDD) is not an envelope",
        M,
        fed.directory_bytes,
    )
    add("frame-version-0", "version byte 0", errors.UnsupportedVersion, ok[:4] + b"\x00" + ok[5:])
    add("frame-version-2", "version byte 2", errors.UnsupportedVersion, ok[:4] + b"\x02" + ok[5:])
    add("frame-suite-0", "suite byte 0", errors.UnsupportedSuite, ok[:5] + b"\x00" + ok[6:])
    add("frame-suite-2", "suite byte 2", errors.UnsupportedSuite, ok[:5] + b"\x02" + ok[6:])
    add("frame-trailing-byte", "one byte appended", M, ok + b"\x00")
    add("frame-trailing-signature", "a second ML-DSA-65 signature appended", M, ok + parts.ml_sig)
    add("frame-truncated-1", "last byte cut off", M, ok[:-1])
    add("frame-truncated-header", "cut in the middle of the header", M, ok[: _middle(ok, "header")])
    add("frame-truncated-body", "cut in the middle of the body", M, ok[: _middle(ok, "body")])
    add(
        "frame-header-over-limit",
        "header length 16385, over max_header_bytes",
        M,
        parts.replace(header=raw + b"\x00" * (16 * 1024 + 1 - len(raw))).assemble(),
    )
    add(
        "frame-wraps-over-limit",
        "17 wraps: more bytes than 16 recipients can have",
        M,
        parts.replace(wraps=(first + second) * 8 + first).assemble(),
    )
    add(
        "frame-body-length-huge",
        "body length 0xffffffff",
        M,
        parts.replace(lengths=(len(raw), len(parts.wraps), 0xFFFFFFFF)).assemble(),
    )
    for name, error in (
        ("magic", M),
        ("version", errors.UnsupportedVersion),
        ("suite", errors.UnsupportedSuite),
        ("sender_kid", errors.UnknownKey),
        ("header_length", M),
        ("header", S),
        ("wraps_length", M),
        ("wraps", S),
        ("body_length", M),
        ("body", S),
        ("ed25519_signature", S),
        ("mldsa65_signature", S),
    ):
        pos = _middle(ok, name)
        add(
            f"flip-{name.replace('_', '-')}",
            f"bit 0 of byte {pos} ({name}) flipped",
            error,
            _flip(ok, pos),
        )

    # -- signatures
    add("sig-ed25519-missing", "Ed25519 signature removed", M, parts.signed() + parts.ml_sig)
    add("sig-mldsa65-missing", "ML-DSA-65 signature removed", M, parts.signed() + parts.ed_sig)
    add("sig-both-missing", "both signatures removed", M, parts.signed())
    add(
        "sig-ed25519-zero",
        "Ed25519 signature all zero",
        S,
        parts.replace(ed_sig=bytes(64)).assemble(),
    )
    add(
        "sig-mldsa65-zero",
        "ML-DSA-65 signature all zero",
        S,
        parts.replace(ml_sig=bytes(3309)).assemble(),
    )
    add(
        "sig-ed25519-wrong-key",
        "Ed25519 signature by spdi-unna's key, ML-DSA-65 right",
        S,
        resign(parts, sign, ed_key=spdi_sign),
    )
    add(
        "sig-mldsa65-wrong-key",
        "ML-DSA-65 signature by spdi-unna's key, Ed25519 right",
        S,
        resign(parts, sign, ml_key=spdi_sign),
    )
    changed = with_header(fed, ok, purpose="debt-counselling")
    add(
        "sig-both-wrong-key",
        "header changed, then both signatures made properly with spdi-unna's key; the frame "
        "still names jobcenter-unna's key",
        S,
        resign(split(changed), spdi_sign),
    )
    add(
        "sig-ed25519-wrong-context",
        "Ed25519 signed under bridge/directory/v1",
        S,
        resign(parts, sign, ed_context=OTHER_CONTEXT),
    )
    add(
        "sig-mldsa65-wrong-context",
        "ML-DSA-65 signed under bridge/directory/v1",
        S,
        resign(parts, sign, ml_context=OTHER_CONTEXT),
    )
    add(
        "sig-both-wrong-context",
        "both signed under bridge/directory/v1",
        S,
        resign(parts, sign, ed_context=OTHER_CONTEXT, ml_context=OTHER_CONTEXT),
    )
    add(
        "sig-swapped-with-other-envelope",
        "signatures of another valid envelope",
        S,
        parts.replace(ed_sig=split(other).ed_sig, ml_sig=split(other).ml_sig).assemble(),
    )

    # -- the sender's key (checked before the signatures)
    add(
        "sender-key-unknown",
        "signed by a key the directory does not list",
        errors.UnknownKey,
        build(fed, signing=impostor(fed, f"{STRANGER}/sign", SENDER)),
    )
    add(
        "sender-key-expired",
        "signed by jobcenter-unna's expired key",
        errors.KeyExpired,
        build(fed, signing=fed.key(f"{SENDER}/sign-expired")),
    )
    add(
        "sender-key-not-yet-valid",
        "signed by jobcenter-unna's key valid from T0+30d",
        errors.KeyExpired,
        build(fed, signing=fed.key(f"{SENDER}/sign-future")),
    )
    add(
        "sender-key-revoked",
        "signed by jobcenter-unna's revoked key",
        errors.KeyRevoked,
        build(fed, signing=fed.key(f"{SENDER}/sign-revoked")),
    )
    add(
        "sender-key-of-other-agency",
        "header says jobcenter-unna; frame kid and signatures are spdi-unna's signing key",
        errors.KeyMisuse,
        build(fed, signing=impostor(fed, "spdi-unna/sign", SENDER)),
    )
    add(
        "sender-kid-is-encryption-key",
        "frame kid is jobcenter-unna's encryption key",
        errors.KeyMisuse,
        parts.replace(kid=fed.key(f"{SENDER}/enc").kid).assemble(),
    )
    add(
        "header-sender-kid-differs",
        "header sender_kid names the revoked key; frame kid and signatures the current one",
        M,
        with_header(fed, ok, sender_kid=fed.key(f"{SENDER}/sign-revoked").kid),
    )

    # -- the header: encoding (all re-signed with the real key, so the header is reached)
    def rs(header_bytes: bytes) -> bytes:
        return with_header(fed, ok, raw=header_bytes)

    add(
        "header-changed-unsigned",
        "purpose changed, signatures left as they were",
        S,
        parts.replace(header=split(changed).header).assemble(),
    )
    add("header-empty", "empty header section", M, rs(b""))
    add("header-not-msgpack", "header is the byte 0xc1 (never used in msgpack)", M, rs(b"\xc1"))
    add("header-truncated-msgpack", "header map cut short", M, rs(raw[:-5]))
    add("header-trailing-byte", "a byte after the header map", M, rs(raw + b"\x00"))
    add(
        "header-array",
        "the header's values as an array, not a map",
        M,
        rs(msgspec.msgpack.encode(list(header.values()))),
    )
    add("header-unknown-field", "an extra field 'note'", M, with_header(fed, ok, note="x"))
    add("header-missing-field", "field clen left out", M, with_header(fed, ok, clen=DROP))
    add(
        "header-explicit-nil-reply-to",
        "reply_to present as nil instead of omitted",
        M,
        with_header(fed, ok, reply_to=None),
    )
    reordered = {"suite": header["suite"], "v": header["v"]} | {
        k: v for k, v in header.items() if k not in ("v", "suite")
    }
    add("header-field-order", "suite before v", M, rs(msgspec.msgpack.encode(reordered)))
    assert raw[1:4] == b"\xa1v\x01"
    add("header-wide-int", "v encoded as uint8 0xcc 0x01", M, rs(raw[:3] + b"\xcc\x01" + raw[4:]))
    type_at = raw.index(b"\xa8referral")
    add(
        "header-wide-str",
        "type encoded as str8",
        M,
        rs(raw[:type_at] + b"\xd9\x08" + raw[type_at + 1 :]),
    )
    add(
        "header-map16",
        "header map with a map16 prefix",
        M,
        rs(b"\xde\x00" + bytes([raw[0] & 0x0F]) + raw[1:]),
    )
    add(
        "header-duplicate-key", "field v twice", M, rs(bytes([raw[0] + 1]) + raw[1:] + b"\xa1v\x01")
    )
    add("header-bool-version", "v is true", M, with_header(fed, ok, v=True))
    sender_at = raw.index(b"\xaejobcenter-unna")
    add(
        "header-invalid-utf8",
        "sender string with a byte that is not UTF-8",
        M,
        rs(raw[: sender_at + 1] + b"\xff" + raw[sender_at + 2 :]),
    )

    # -- the header: field rules
    add("header-version-2", "header v 2 under a version-1 frame", M, with_header(fed, ok, v=2))
    add("header-suite-2", "header suite 2 under a suite-1 frame", M, with_header(fed, ok, suite=2))
    add(
        "header-bad-message-id",
        "id not a lowercase UUIDv4",
        M,
        with_header(fed, ok, id=MESSAGE_ID.upper()),
    )
    add("header-bad-reply-to", "reply_to not a UUID", M, with_header(fed, ok, reply_to="case-4711"))
    add("header-unknown-type", "type 'memo'", M, with_header(fed, ok, type="memo"))
    add("header-bad-consent", "consent is free text", M, with_header(fed, ok, consent="Herr M."))
    add(
        "header-consent-newline",
        "consent reference followed by a newline",
        M,
        with_header(fed, ok, consent=CONSENT + "\n"),
    )
    add(
        "header-purpose-newline",
        "purpose code followed by a newline",
        M,
        with_header(fed, ok, purpose=PURPOSE + "\n"),
    )
    add(
        "header-sender-newline",
        "sender agency id followed by a newline",
        M,
        with_header(fed, ok, sender=SENDER + "\n"),
    )
    add(
        "header-sender-other-agency",
        "sender says spdi-unna; signed with jobcenter-unna's key",
        errors.KeyMisuse,
        with_header(fed, ok, sender="spdi-unna"),
    )
    add("header-categories-empty", "no data categories", M, with_header(fed, ok, categories=[]))
    add(
        "header-categories-duplicate",
        "a data category twice",
        M,
        with_header(fed, ok, categories=["health", "health"]),
    )
    add(
        "header-categories-too-many",
        "17 data categories",
        M,
        with_header(fed, ok, categories=[f"cat-{i}" for i in range(17)]),
    )
    add(
        "header-clen-mismatch",
        "clen one more than the body",
        M,
        with_header(fed, ok, clen=header["clen"] + 1),
    )

    # -- recipients
    add(
        "recipients-none",
        "no recipients, no wraps",
        errors.RecipientError,
        build(fed, recipients=[]),
        reason="envelope.no_recipients",
    )
    add(
        "recipients-duplicate",
        "suchtberatung-unna twice",
        errors.RecipientError,
        build(fed, recipients=[RECIPIENTS[0], RECIPIENTS[0]]),
        reason="envelope.duplicate_recipient",
    )
    many = [{"agency": f"agency-{i}", "kid": bytes(16)} for i in range(17)]
    add(
        "recipients-too-many",
        "17 recipients in the header (2 wraps)",
        errors.RecipientError,
        with_header(fed, ok, recipients=many),
        reason="envelope.too_many_recipients",
    )
    add(
        "recipient-unknown-agency",
        "klinik-dortmund is not in the directory",
        errors.RecipientError,
        build(fed, recipients=[(STRANGER, fed.record(f"{STRANGER}/enc"))]),
        reason="envelope.unknown_recipient",
    )
    add(
        "recipient-key-unknown",
        "suchtberatung-unna with a kid the directory does not list",
        errors.UnknownKey,
        build(fed, recipients=[(RECIPIENTS[0], fed.record(f"{STRANGER}/enc"))]),
    )
    add(
        "recipient-key-expired",
        "suchtberatung-unna's expired encryption key",
        errors.KeyExpired,
        build(fed, recipients=[(RECIPIENTS[0], fed.record(f"{RECIPIENTS[0]}/enc-expired"))]),
    )
    add(
        "recipient-key-revoked",
        "suchtberatung-unna's revoked encryption key",
        errors.KeyRevoked,
        build(fed, recipients=[(RECIPIENTS[0], fed.record(f"{RECIPIENTS[0]}/enc-revoked"))]),
    )
    add(
        "recipient-key-of-other-agency",
        "suchtberatung-unna named with spdi-unna's key",
        errors.KeyMisuse,
        build(fed, recipients=[(RECIPIENTS[0], fed.record("spdi-unna/enc"))]),
    )
    swapped_kid = [
        dict(header["recipients"][0], kid=fed.key(f"{RECIPIENTS[0]}/sign").kid),
        header["recipients"][1],
    ]
    add(
        "recipient-kid-is-signing-key",
        "suchtberatung-unna named with its signing key",
        errors.KeyMisuse,
        with_header(fed, ok, recipients=swapped_kid),
    )

    # -- wraps
    add(
        "wraps-swapped-unsigned",
        "the two wraps swapped, not re-signed",
        S,
        parts.replace(wraps=second + first).assemble(),
    )
    add(
        "wraps-swapped",
        "the two wraps swapped, re-signed",
        M,
        resign(parts.replace(wraps=second + first), sign),
    )
    add(
        "wraps-dropped",
        "the second wrap removed, re-signed",
        M,
        resign(parts.replace(wraps=first), sign),
    )
    add(
        "wraps-duplicated",
        "the first wrap twice more, re-signed",
        M,
        resign(parts.replace(wraps=first + second + first), sign),
    )
    add(
        "wraps-first-twice",
        "the first wrap in both places, re-signed",
        M,
        resign(parts.replace(wraps=first + first), sign),
    )
    add(
        "wrap-from-other-envelope-unsigned",
        "first wrap taken from another envelope",
        S,
        parts.replace(wraps=other_first + second).assemble(),
    )
    add(
        "wrap-from-other-envelope",
        "first wrap taken from another envelope (same recipient key), re-signed: the broker "
        "cannot tell, suchtberatung-unna cannot open it (the wrap is bound to the other header)",
        errors.DecryptionFailed,
        resign(parts.replace(wraps=other_first + second), sign),
        check="open",
        as_agency=RECIPIENTS[0],
        opens_for=[RECIPIENTS[1]],
    )
    tampered = first[:100] + bytes([first[100] ^ 1]) + first[101:]
    add(
        "wrap-tampered",
        "a bit of the first wrap's encapsulation flipped, re-signed",
        errors.DecryptionFailed,
        resign(parts.replace(wraps=tampered + second), sign),
        check="open",
        as_agency=RECIPIENTS[0],
        opens_for=[RECIPIENTS[1]],
    )

    # -- body
    add(
        "body-truncated",
        "body one byte short (frame adjusted), re-signed",
        M,
        resign(parts.replace(body=parts.body[:-1]), sign),
    )
    add(
        "body-extended",
        "body one byte longer (frame adjusted), re-signed",
        M,
        resign(parts.replace(body=parts.body + b"\x00"), sign),
    )
    add(
        "body-tampered",
        "a bit of the body flipped, re-signed",
        errors.DecryptionFailed,
        resign(parts.replace(body=_flip(parts.body, 3)), sign),
        check="open",
        as_agency=RECIPIENTS[1],
    )
    add(
        "different-content-keys",
        "each recipient's wrap holds a different content key; the header commits to the "
        "first; properly signed",
        errors.KeyCommitmentMismatch,
        build(fed, content_keys=[CONTENT_KEY, OTHER_CONTENT_KEY]),
        check="open",
        as_agency=RECIPIENTS[1],
        opens_for=[RECIPIENTS[0]],
    )

    # -- time and size
    add(
        "issued-in-future",
        "iat 301 s after the verification time",
        errors.NotYetValid,
        build(fed, iat=T0 + 301),
    )
    add(
        "expired",
        "exp one second before the verification time",
        errors.EnvelopeExpired,
        build(fed, iat=T0 - 2 * DAY, exp=T0 - 1),
    )
    add(
        "expires-at-verification-time",
        "exp equal to the verification time",
        errors.EnvelopeExpired,
        build(fed, iat=T0 - DAY, exp=T0),
    )
    add(
        "lifetime-too-long",
        "exp - iat one second over 30 days",
        errors.LifetimeTooLong,
        build(fed, iat=T0 - 60, exp=T0 - 60 + 30 * DAY + 1),
    )
    add("expires-before-issued", "exp before iat", M, build(fed, iat=T0 - 60, exp=T0 - 61))
    hdr_iat, hdr_exp = header["iat"], header["exp"]
    add(
        "ok-after-expiry",
        "the valid envelope checked at its exp",
        errors.EnvelopeExpired,
        None,
        file="referral-ok.bin",
        now=hdr_exp,
    )
    add(
        "ok-before-issue",
        "the valid envelope checked 301 s before its iat",
        errors.NotYetValid,
        None,
        file="referral-ok.bin",
        now=hdr_iat - 301,
    )
    add(
        "ok-too-large",
        "the valid envelope against max_envelope_bytes one below its size",
        errors.TooLarge,
        None,
        file="referral-ok.bin",
        limits={"max_envelope_bytes": len(ok) - 1},
    )
    add(
        "ok-too-many-wraps-for-limit",
        "the valid envelope (2 wraps) against max_recipients 1",
        M,
        None,
        file="referral-ok.bin",
        limits={"max_recipients": 1},
    )
    add(
        "ok-not-a-recipient",
        "the valid envelope opened by its sender",
        errors.NotARecipient,
        None,
        file="referral-ok.bin",
        check="open",
        as_agency=SENDER,
    )
    return n


# -- attachments --------------------------------------------------------------------------------

ATTACHMENT_MESSAGE_ID = "5a0c2e7b-9d41-4f3a-8b6e-1c7d2f9e0a34"
ATTACHMENT_CHUNK = 1024  # the smallest allowed, so that a few chunks stay a small file
ATTACHMENTS = [
    # name, media type, size: four chunks (the last short), one exact chunk, an empty file
    ("entlassbrief-synthetisch.pdf", "application/pdf", 3 * 1024 + 428),
    ("einwilligung-scan.png", "image/png", 1024),
    ("leer.txt", "text/plain", 0),
]


def _attachment_plaintext(index: int, size: int) -> bytes:
    return hashlib.shake_256(b"bridge attachment vector %d" % index).digest(size)


def _aesgcm(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    # Straight from cryptography, not through bridge: the vectors must not come from the code
    # under test.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key).encrypt(nonce, plaintext, b"")


def _chunk_nonce(index: int, final: bool) -> bytes:
    return bytes(7) + index.to_bytes(4, "big") + bytes([final])


def _attachment_chunks(content_key: bytes, index: int, plaintext: bytes) -> dict[str, Any]:
    okm = _hkdf(content_key, b"bridge/v1 attachment" + index.to_bytes(4, "big"), 64)
    chunk_key, meta_key = okm[:32], okm[32:]
    count = max(1, -(-len(plaintext) // ATTACHMENT_CHUNK))
    chunks = []
    for j in range(count):
        part = plaintext[j * ATTACHMENT_CHUNK : (j + 1) * ATTACHMENT_CHUNK]
        nonce = _chunk_nonce(j, j == count - 1)
        chunks.append(
            {
                "index": j,
                "final": j == count - 1,
                "nonce": nonce.hex(),
                "ciphertext_hex": _aesgcm(chunk_key, nonce, part).hex(),
            }
        )
    return {"chunk_key": chunk_key.hex(), "meta_key": meta_key.hex(), "chunks": chunks}


def _attachment_vectors(fed: Federation) -> None:
    """attachments.json and referral-attachments-ok.bin: see docs/envelope.md#attachments."""
    from bridge.crypto import Attachment, AttachmentSealer, OpenedAttachment

    listed = []
    entries = []
    for index, (name, media_type, size) in enumerate(ATTACHMENTS):
        plaintext = _attachment_plaintext(index, size)
        expected = _attachment_chunks(CONTENT_KEY, index, plaintext)
        digest = hashlib.sha256(plaintext).digest()
        meta = _aesgcm(bytes.fromhex(expected["meta_key"]), bytes(12), digest + name.encode())
        # bridge's sealer, fed in uneven pieces, must produce exactly these bytes
        sealer = AttachmentSealer(
            CONTENT_KEY, index, name=name, media_type=media_type, chunk=ATTACHMENT_CHUNK
        )
        produced = [c for piece in (plaintext[:700], plaintext[700:]) for c in sealer.update(piece)]
        last, entry = sealer.finish()
        produced.append(last)
        assert [c.hex() for c in produced] == [c["ciphertext_hex"] for c in expected["chunks"]]
        assert entry == Attachment(type=media_type, size=size, chunk=ATTACHMENT_CHUNK, meta=meta)
        entries.append(entry)
        listed.append(
            {
                "index": index,
                "name": name,
                "type": media_type,
                "size": size,
                "chunk": ATTACHMENT_CHUNK,
                "plaintext_hex": plaintext.hex(),
                "sha256": digest.hex(),
                "meta_hex": meta.hex(),
                **expected,
            }
        )
    data = build(
        fed,
        content_key=CONTENT_KEY,
        message_id=ATTACHMENT_MESSAGE_ID,
        attachments=entries,
    )
    opened = open_envelope(data, fed.keyring(RECIPIENTS[0]), fed.directory, now=T0)
    assert [(a.name, a.digest.hex()) for a in opened.attachments] == [
        (a["name"], a["sha256"]) for a in listed
    ]
    (OUT / "referral-attachments-ok.bin").write_bytes(data)
    parts = split(data)

    def chunks_of(index: int) -> list[bytes]:
        return [bytes.fromhex(c["ciphertext_hex"]) for c in listed[index]["chunks"]]

    first, second = chunks_of(0), chunks_of(1)
    plain0 = _attachment_plaintext(0, ATTACHMENTS[0][2])
    okm = _hkdf(CONTENT_KEY, b"bridge/v1 attachment" + bytes(4), 64)
    other = _attachment_chunks(OTHER_CONTENT_KEY, 0, plain0)["chunks"]
    flipped = bytearray(first[1])
    flipped[100] ^= 0x01
    negatives = [
        ("truncated", "the final chunk is missing", first[:3], "attachment.truncated"),
        ("empty", "no chunk at all", [], "attachment.truncated"),
        ("reordered", "chunks 0 and 1 swapped", [first[1], first[0], *first[2:]],
         "attachment.decryption_failed"),
        ("duplicated", "chunk 0 twice", [first[0], *first], "attachment.decryption_failed"),
        ("extra-chunk", "a chunk after the final one", [*first, first[3]],
         "attachment.too_long"),
        ("altered", "one bit of chunk 1 flipped", [first[0], bytes(flipped), *first[2:]],
         "attachment.decryption_failed"),
        ("cut-short", "the last chunk one byte short", [*first[:3], first[3][:-1]],
         "attachment.malformed"),
        ("from-other-attachment", "chunk 0 of attachment 1 in the place of chunk 0",
         [second[0], *first[1:]], "attachment.decryption_failed"),
        ("from-other-message", "chunk 1 of the same file sealed for another message",
         [first[0], bytes.fromhex(other[1]["ciphertext_hex"]), *first[2:]],
         "attachment.decryption_failed"),
        ("final-not-marked", "the last chunk sealed with final flag 0",
         [*first[:3], _aesgcm(okm[:32], _chunk_nonce(3, False), plain0[3072:])],
         "attachment.decryption_failed"),
        ("early-final", "chunk 0 sealed with final flag 1",
         [_aesgcm(okm[:32], _chunk_nonce(0, True), plain0[:1024]), *first[1:]],
         "attachment.decryption_failed"),
    ]  # fmt: skip
    negative_entries = []
    entry0 = OpenedAttachment.open(CONTENT_KEY, 0, entries[0])
    for name, about, chunks, reason in negatives:
        reader = entry0.reader()
        try:
            for chunk in chunks:
                reader.feed(chunk)
            reader.finish()
        except errors.AttachmentInvalid as exc:
            if exc.reason != reason:
                raise SystemExit(f"attachment vector {name}: got {exc.reason}") from exc
        else:
            raise SystemExit(f"attachment vector {name}: accepted")
        negative_entries.append(
            {
                "name": name,
                "about": about,
                "attachment": 0,
                "chunks_hex": [c.hex() for c in chunks],
                "error": "AttachmentInvalid",
                "reason": reason,
            }
        )
    # A sender that declares another digest than the file's: only the reader's end sees it.
    wrong_meta = _aesgcm(okm[32:], bytes(12), bytes(32) + ATTACHMENTS[0][0].encode())
    forged = OpenedAttachment.open(
        CONTENT_KEY,
        0,
        Attachment(type="application/pdf", size=len(plain0), chunk=1024, meta=wrong_meta),
    )
    reader = forged.reader()
    for chunk in first:
        reader.feed(chunk)
    try:
        reader.finish()
    except errors.AttachmentInvalid as exc:
        if exc.reason != "attachment.digest_mismatch":
            raise SystemExit(f"attachment vector digest-mismatch: got {exc.reason}") from exc
    else:
        raise SystemExit("attachment vector digest-mismatch: accepted")
    negative_entries.append(
        {
            "name": "digest-mismatch",
            "about": "every chunk genuine, but the meta declares a digest of 32 zero bytes",
            "attachment": 0,
            "meta_hex": wrong_meta.hex(),
            "chunks_hex": [c.hex() for c in first],
            "error": "AttachmentInvalid",
            "reason": "attachment.digest_mismatch",
        }
    )
    _write_json(
        OUT / "attachments.json",
        {
            "about": (
                "An envelope from jobcenter-unna to both services with three attachments, "
                "their key schedule and chunks; `negative` lists chunk sequences for "
                "attachment 0 that a reader must reject with `reason` (with `meta_hex`, in "
                "place of the header's meta)."
            ),
            "file": "referral-attachments-ok.bin",
            "verify_at": T0,
            "content_key": CONTENT_KEY.hex(),
            "header": _hexify(decode_header(parts.header)),
            "header_hex": parts.header.hex(),
            "attachments": listed,
            "negative": negative_entries,
        },
    )


def main() -> None:
    if sys.argv[1:] == ["--attachments"]:
        # Only the attachment vectors: the other files stay as committed.
        _attachment_vectors(federation(T0))
        return
    fed = federation(T0)
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "negative").mkdir(parents=True)
    (OUT / "directory.bin").write_bytes(fed.directory_bytes)
    anchor = fed.anchor.public_record()
    (OUT / "anchor.json").write_bytes(msgspec.json.encode(anchor) + b"\n")
    _write_json(OUT / "federation.json", _federation_json(fed))

    ok = build(fed, content_key=CONTENT_KEY)
    _positive(fed, "referral-ok", ok, CONTENT_KEY, PLAINTEXT)
    reply = build(
        fed,
        FEEDBACK_PLAINTEXT,
        signing=fed.key("suchtberatung-unna/sign"),
        recipients=[SENDER],
        content_key=OTHER_CONTENT_KEY,
        message_type="feedback",
        reply_to=MESSAGE_ID,
        message_id=FEEDBACK_ID,
    )
    _positive(fed, "feedback-reply-ok", reply, OTHER_CONTENT_KEY, FEEDBACK_PLAINTEXT)
    _attachment_vectors(fed)

    entries = []
    for neg in _negatives(fed, ok):
        if neg.data is not None:
            neg.file = f"negative/{neg.name}.bin"
            (OUT / neg.file).write_bytes(neg.data)
        assert neg.file is not None
        data = (OUT / neg.file).read_bytes()
        reason = neg.reason or neg.error.reason
        _self_check(fed, neg, data, reason)
        entry: dict[str, Any] = {
            "name": neg.name,
            "file": neg.file,
            "about": neg.about,
            "check": neg.check,
        }
        if neg.as_agency:
            entry["as"] = neg.as_agency
        entry["now"] = neg.now
        if neg.limits:
            entry["limits"] = neg.limits
        entry["error"] = neg.error.__name__
        entry["reason"] = reason
        if neg.check == "open":
            entry["verifies"] = _verifies(fed, data, neg)
        if neg.opens_for:
            entry["opens_for"] = neg.opens_for
        entries.append(entry)
    _write_json(
        OUT / "negative.json",
        {
            "about": (
                "Each vector must be rejected by `check` (verify, or open as agency `as`) at "
                "time `now` under the default limits changed by `limits`, with exactly this "
                "error type and reason code. `verifies`: verify alone accepts it (only a "
                "recipient can tell). `opens_for`: recipients that still open it."
            ),
            "default_limits": {
                name: getattr(DEFAULT_LIMITS, name) for name in DEFAULT_LIMITS.__struct_fields__
            },
            "vectors": entries,
        },
    )
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {len(entries)} negative vectors, {total} bytes, to {OUT}")


def _limits(neg: Negative) -> Limits:
    return Limits(**neg.limits)


def _verifies(fed: Federation, data: bytes, neg: Negative) -> bool:
    try:
        verify(data, fed.directory, now=neg.now, limits=_limits(neg))
    except errors.BridgeError:
        return False
    return True


def _self_check(fed: Federation, neg: Negative, data: bytes, reason: str) -> None:
    """Refuse to write a vector whose outcome is not the one its entry claims."""
    run: Callable[[], object]
    if neg.check == "verify":

        def run() -> object:
            return verify(data, fed.directory, now=neg.now, limits=_limits(neg))
    else:
        assert neg.as_agency is not None
        keyring = fed.keyring(neg.as_agency)

        def run() -> object:
            return open_envelope(data, keyring, fed.directory, now=neg.now, limits=_limits(neg))

    try:
        run()
    except errors.BridgeError as exc:
        if type(exc) is not neg.error or exc.reason != reason:
            raise SystemExit(
                f"{neg.name}: expected {neg.error.__name__}/{reason}, got {exc!r}"
            ) from exc
    else:
        raise SystemExit(f"{neg.name}: accepted")
    for agency in neg.opens_for:
        open_envelope(data, fed.keyring(agency), fed.directory, now=neg.now)


if __name__ == "__main__":
    main()
