"""The envelope: every bad input is rejected with its own error type and reason code.

A peer sees one opaque rejection, but the audit log and the sender's status event carry the
reason code, so a test that only checks "some error" would let a wrong code (or a stray
`ValueError`) through. `rejected()` therefore catches only `BridgeError` and checks the exact type.

The signatures are checked before the header is parsed. To reach a check behind them, a test
re-signs its modified envelope with the sender's real key (`with_header`, `resign`, `build`):
what a sender holding a valid key could do, which is the case those checks exist for.

The stored vectors (tests/assets/vectors/) are checked at the end of this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from envelope_helpers import (
    CATEGORIES,
    CONSENT,
    DAY,
    DROP,
    MESSAGE_ID,
    OTHER_CONTEXT,
    PLAINTEXT,
    PURPOSE,
    RECIPIENTS,
    REPLY_TO,
    SENDER,
    STRANGER,
    T0,
    Federation,
    build,
    decode_header,
    encode_header,
    federation,
    impostor,
    resign,
    seal_referral,
    sections,
    split,
    with_header,
)

from bridge import errors
from bridge.crypto import Keyring, Limits, PrivateKey, open_envelope, verify
from bridge.crypto.envelope import DEFAULT_LIMITS, SIGNATURE_CONTEXT, Opened, VerifiedEnvelope
from bridge.errors import (
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
from bridge.federation.directory import Directory

VECTORS = Path(__file__).parent / "assets" / "vectors"


@contextmanager
def rejected(cls: type[errors.BridgeError], reason: str | None = None) -> Iterator[None]:
    """Expect exactly `cls` (not a subclass, not a sibling) with `reason` (default: its own)."""
    with pytest.raises(errors.BridgeError) as info:
        yield
    assert type(info.value) is cls, f"expected {cls.__name__}, got {info.value!r}"
    assert info.value.reason == (reason or cls.reason), repr(info.value)


@pytest.fixture(scope="module")
def fed() -> Federation:
    return federation(T0)


@pytest.fixture(scope="module")
def ok(fed: Federation) -> bytes:
    """A valid two-recipient referral with a fixed content key (HPKE and ML-DSA still random)."""
    return build(fed)


@pytest.fixture(scope="module")
def other(fed: Federation) -> bytes:
    """Another valid envelope to the same recipients: a different id and content key."""
    return build(fed, content_key=b"\x07" * 32, message_id=REPLY_TO)


def check(fed: Federation, data: bytes, **kwargs: Any) -> VerifiedEnvelope:
    return verify(data, fed.directory, now=kwargs.pop("now", fed.now), **kwargs)


def open_as(fed: Federation, agency: str, data: bytes, **kwargs: Any) -> Opened:
    keyring = kwargs.pop("keyring", None) or fed.keyring(agency)
    return open_envelope(data, keyring, fed.directory, now=kwargs.pop("now", fed.now), **kwargs)


def both_reject(
    fed: Federation, data: bytes, cls: type[errors.BridgeError], reason: str | None = None
) -> None:
    """The broker's verify and every recipient's open refuse `data` the same way."""
    with rejected(cls, reason):
        check(fed, data)
    for agency in RECIPIENTS:
        with rejected(cls, reason):
            open_as(fed, agency, data)


# -- what must work -----------------------------------------------------------------------------


@pytest.mark.parametrize("agency", RECIPIENTS)
def test_round_trip_to_each_recipient(fed: Federation, agency: str) -> None:
    data = seal_referral(fed)
    opened = open_as(fed, agency, data)
    assert opened.plaintext == PLAINTEXT
    header = opened.header
    assert (header.sender, header.type, header.consent, header.purpose) == (
        SENDER,
        "referral",
        CONSENT,
        PURPOSE,
    )
    assert [r.agency for r in header.recipients] == list(RECIPIENTS)
    assert header.categories == list(CATEGORIES)
    assert (header.iat, header.exp) == (fed.now, fed.now + 7 * DAY)
    assert header.reply_to is None
    assert opened.envelope.raw == data


def test_every_recipient_reads_the_same_header_and_plaintext(fed: Federation) -> None:
    data = seal_referral(fed)
    a, b = (open_as(fed, agency, data) for agency in RECIPIENTS)
    assert a.header == b.header
    assert a.plaintext == b.plaintext == PLAINTEXT
    assert a.envelope.header_hash == b.envelope.header_hash


def test_reply_to_round_trips_and_is_omitted_when_absent(fed: Federation) -> None:
    reply = seal_referral(
        fed, recipients=[RECIPIENTS[0]], message_type="feedback", reply_to=MESSAGE_ID
    )
    opened = open_as(fed, RECIPIENTS[0], reply)
    assert opened.header.reply_to == MESSAGE_ID
    assert list(decode_header(split(reply).header))[-1] == "reply_to"
    assert "reply_to" not in decode_header(split(seal_referral(fed)).header)


def test_header_encoding_is_field_order_and_matches_test_encoder(
    fed: Federation, ok: bytes
) -> None:
    """The tests' own re-encoding must equal bridge's, or every re-signed test would be moot."""
    raw = split(ok).header
    fields = decode_header(raw)
    assert list(fields) == [
        "v", "suite", "id", "type", "sender", "sender_kid", "recipients", "consent",
        "purpose", "categories", "iat", "exp", "clen", "commit",
    ]  # fmt: skip
    assert encode_header(fields) == raw
    assert with_header(fed, ok) != ok  # fresh signatures...
    assert split(with_header(fed, ok)).header == raw  # ...over the same header
    check(fed, with_header(fed, ok))


def test_resigning_an_unchanged_envelope_verifies(fed: Federation, ok: bytes) -> None:
    """Control for the wrong-key and wrong-context tests: the re-signing tool itself is sound."""
    again = resign(split(ok), fed.key(f"{SENDER}/sign"))
    assert split(again).header == split(ok).header
    assert open_as(fed, RECIPIENTS[0], again).plaintext == PLAINTEXT


def test_large_body_at_the_size_limit(fed: Federation) -> None:
    limit = DEFAULT_LIMITS.max_envelope_bytes
    size = limit - 8000
    size += limit - len(seal_referral(fed, b"\x00" * size))
    body = bytes(i % 251 for i in range(size))
    data = seal_referral(fed, body)
    assert len(data) == limit
    for agency in RECIPIENTS:
        assert open_as(fed, agency, data).plaintext == body
    # seal() verifies what it made, so one byte more is refused before it leaves the sender.
    with rejected(TooLarge):
        seal_referral(fed, body + b"\x00")


def test_broker_verifies_with_no_private_key(fed: Federation) -> None:
    """The broker has the signed directory and the anchor's public key, nothing else."""
    data = seal_referral(fed)
    directory = Directory.load(fed.directory_bytes, fed.anchor.public_record(), now=fed.now)
    envelope = verify(data, directory, now=fed.now)
    assert envelope.raw == data
    assert envelope.header_hash == hashlib.sha256(split(data).header).digest()
    assert envelope.sender_key == fed.record(f"{SENDER}/sign")
    assert envelope.verified_at == fed.now
    assert envelope.message_id == envelope.header.id


def test_reprs_never_show_the_plaintext(fed: Federation) -> None:
    opened = open_as(fed, RECIPIENTS[0], seal_referral(fed))
    assert b"synthetic" in opened.plaintext
    assert "synthetic" not in repr(opened)
    assert f"<{len(PLAINTEXT)} bytes>" in repr(opened)


@pytest.mark.parametrize(
    ("iat", "exp", "now"),
    [
        (T0 + 300, T0 + 300 + DAY, T0),  # issued at the edge of the clock skew
        (T0 - DAY, T0 + 1, T0),  # one second before expiry
        (T0 - 60, T0 - 60 + 30 * DAY, T0),  # exactly the longest lifetime
        (T0 - 60, T0 - 59, T0 - 60),  # a one-second lifetime
    ],
)
def test_time_boundaries_that_pass(fed: Federation, iat: int, exp: int, now: int) -> None:
    check(fed, build(fed, iat=iat, exp=exp), now=now)


# -- the frame: size, magic, version, suite, lengths ------------------------------------------


def test_oversize_is_rejected_before_anything_else(fed: Federation, ok: bytes) -> None:
    with rejected(TooLarge):
        check(fed, ok, limits=Limits(max_envelope_bytes=len(ok) - 1))
    check(fed, ok, limits=Limits(max_envelope_bytes=len(ok)))
    with rejected(TooLarge):
        check(fed, b"\xff" * (DEFAULT_LIMITS.max_envelope_bytes + 1))
    with rejected(TooLarge):
        open_as(fed, RECIPIENTS[0], ok + b"\x00" * DEFAULT_LIMITS.max_envelope_bytes)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version(fed: Federation, ok: bytes, version: int) -> None:
    parts = split(ok).replace(version=version)
    both_reject(fed, parts.assemble(), UnsupportedVersion)
    # Properly signed makes no difference: the frame is read before any key is looked up.
    both_reject(fed, resign(parts, fed.key(f"{SENDER}/sign")), UnsupportedVersion)


@pytest.mark.parametrize("suite", [0, 2, 255])
def test_unknown_suite(fed: Federation, ok: bytes, suite: int) -> None:
    parts = split(ok).replace(suite=suite)
    both_reject(fed, parts.assemble(), UnsupportedSuite)
    both_reject(fed, resign(parts, fed.key(f"{SENDER}/sign")), UnsupportedSuite)


@pytest.mark.parametrize(
    "data",
    [b"", b"BRDG", b"BRDG\x01\x01" + bytes(16), b"\x00" * 3422],
    ids=["empty", "magic", "prefix", "short"],
)
def test_too_short(fed: Federation, data: bytes) -> None:
    both_reject(fed, data, MalformedEnvelope)


def test_bad_magic_and_other_documents(fed: Federation, ok: bytes) -> None:
    both_reject(fed, b"BRDX" + ok[4:], MalformedEnvelope)
    both_reject(fed, fed.directory_bytes, MalformedEnvelope)  # a signed directory, "BRDD"


def test_trailing_bytes(fed: Federation, ok: bytes) -> None:
    for extra in (b"\x00", b"\xff" * 17, split(ok).ml_sig, ok):
        both_reject(fed, ok + extra, MalformedEnvelope)


@pytest.mark.parametrize(
    "section", ["header", "wraps", "body", "ed25519_signature", "mldsa65_signature"]
)
def test_truncated(fed: Federation, ok: bytes, section: str) -> None:
    start, end = sections(ok)[section]
    for cut in {start, (start + end) // 2, end - 1}:
        both_reject(fed, ok[:cut], MalformedEnvelope)


def test_length_prefixes_over_their_limits(fed: Federation, ok: bytes) -> None:
    parts = split(ok)
    sign = fed.key(f"{SENDER}/sign")
    big_header = parts.header + bytes(DEFAULT_LIMITS.max_header_bytes + 1 - len(parts.header))
    both_reject(fed, resign(parts.replace(header=big_header), sign), MalformedEnvelope)
    for lengths in [
        (0xFFFFFFFF, len(parts.wraps), len(parts.body)),
        (len(parts.header), 0xFFFFFFFF, len(parts.body)),
        (len(parts.header), len(parts.wraps), 0xFFFFFFFF),
        (len(parts.header) + 1, len(parts.wraps), len(parts.body)),
        (len(parts.header), len(parts.wraps) - 1, len(parts.body)),
        (len(parts.header), len(parts.wraps), len(parts.body) + 1),
    ]:
        both_reject(fed, parts.replace(lengths=lengths).assemble(), MalformedEnvelope)


def test_more_wraps_than_the_recipient_limit_allows_fail_at_the_frame(
    fed: Federation, ok: bytes
) -> None:
    """17 wraps exceed the frame's bound on the wraps section: rejected before the signatures
    as malformed (RecipientError's too_many_recipients needs the header, which comes later)."""
    parts = split(ok)
    first, second = parts.wrap_list()
    seventeen = resign(parts.replace(wraps=(first + second) * 8 + first), fed.key(f"{SENDER}/sign"))
    both_reject(fed, seventeen, MalformedEnvelope)
    with rejected(MalformedEnvelope):
        check(fed, ok, limits=Limits(max_recipients=1))


_FLIP_EXPECTED: dict[str, type[errors.BridgeError]] = {
    "magic": MalformedEnvelope,
    "version": UnsupportedVersion,
    "suite": UnsupportedSuite,
    "sender_kid": UnknownKey,
    "header_length": MalformedEnvelope,
    "header": SignatureInvalid,
    "wraps_length": MalformedEnvelope,
    "wraps": SignatureInvalid,
    "body_length": MalformedEnvelope,
    "body": SignatureInvalid,
    "ed25519_signature": SignatureInvalid,
    "mldsa65_signature": SignatureInvalid,
}


@pytest.mark.parametrize("section", list(_FLIP_EXPECTED))
def test_bit_flips_in_every_section(fed: Federation, ok: bytes, section: str) -> None:
    start, end = sections(ok)[section]
    positions = sorted({start, start + (end - start) // 3, (start + end) // 2, end - 1})
    for pos in positions:
        for bit in (0, 7):
            flipped = ok[:pos] + bytes([ok[pos] ^ (1 << bit)]) + ok[pos + 1 :]
            both_reject(fed, flipped, _FLIP_EXPECTED[section])


# -- signatures -------------------------------------------------------------------------------


def test_a_missing_signature_breaks_the_frame(fed: Federation, ok: bytes) -> None:
    parts = split(ok)
    for data in (parts.signed() + parts.ml_sig, parts.signed() + parts.ed_sig, parts.signed()):
        both_reject(fed, data, MalformedEnvelope)


def test_zeroed_or_swapped_signatures(fed: Federation, ok: bytes, other: bytes) -> None:
    parts, theirs = split(ok), split(other)
    for data in (
        parts.replace(ed_sig=bytes(64)).assemble(),
        parts.replace(ml_sig=bytes(3309)).assemble(),
        parts.replace(ed_sig=theirs.ed_sig).assemble(),
        parts.replace(ml_sig=theirs.ml_sig).assemble(),
        parts.replace(ed_sig=parts.ml_sig[:64], ml_sig=parts.ed_sig + parts.ml_sig[64:]).assemble(),
    ):
        both_reject(fed, data, SignatureInvalid)


@pytest.mark.parametrize("which", ["ed25519", "mldsa65", "both"])
def test_signature_with_the_wrong_key(fed: Federation, ok: bytes, which: str) -> None:
    right, wrong = fed.key(f"{SENDER}/sign"), fed.key("spdi-unna/sign")
    parts = split(ok)
    ed = wrong if which in ("ed25519", "both") else right
    ml = wrong if which in ("mldsa65", "both") else right
    both_reject(fed, resign(parts, right, ed_key=ed, ml_key=ml), SignatureInvalid)
    # A changed header, properly signed by another agency's real key: the key check, not
    # corruption, is what refuses it (the frame still names the sender's key).
    changed = split(with_header(fed, ok, purpose="debt-counselling"))
    both_reject(fed, resign(changed, right, ed_key=ed, ml_key=ml), SignatureInvalid)


@pytest.mark.parametrize("which", ["ed25519", "mldsa65", "both"])
@pytest.mark.parametrize("context", [OTHER_CONTEXT, b"", b"bridge/envelope/v2"])
def test_signature_with_the_wrong_context(
    fed: Federation, ok: bytes, which: str, context: bytes
) -> None:
    key = fed.key(f"{SENDER}/sign")
    ed = context if which in ("ed25519", "both") else SIGNATURE_CONTEXT
    ml = context if which in ("mldsa65", "both") else SIGNATURE_CONTEXT
    both_reject(fed, resign(split(ok), key, ed_context=ed, ml_context=ml), SignatureInvalid)


# -- the sender's key -------------------------------------------------------------------------


def test_sender_key_unknown(fed: Federation) -> None:
    both_reject(fed, build(fed, signing=impostor(fed, f"{STRANGER}/sign", SENDER)), UnknownKey)
    both_reject(fed, build(fed, signing=fed.key(f"{STRANGER}/sign")), UnknownKey)


@pytest.mark.parametrize(
    ("label", "error"),
    [("sign-expired", KeyExpired), ("sign-future", KeyExpired), ("sign-revoked", KeyRevoked)],
)
def test_sender_key_expired_not_yet_valid_or_revoked(
    fed: Federation, label: str, error: type[errors.BridgeError]
) -> None:
    both_reject(fed, build(fed, signing=fed.key(f"{SENDER}/{label}")), error)


def test_sender_key_of_another_agency(fed: Federation) -> None:
    """spdi-unna signs with its own key but writes jobcenter-unna as the sender."""
    both_reject(fed, build(fed, signing=impostor(fed, "spdi-unna/sign", SENDER)), KeyMisuse)


def test_sender_changed_to_another_agency(fed: Federation, ok: bytes) -> None:
    both_reject(fed, with_header(fed, ok, sender="spdi-unna"), KeyMisuse)


def test_encryption_key_id_in_the_signing_position(fed: Federation, ok: bytes) -> None:
    enc_kid = fed.key(f"{SENDER}/enc").kid
    both_reject(fed, split(ok).replace(kid=enc_kid).assemble(), KeyMisuse)
    # The header agreeing with the frame does not help: the kid's use is checked first.
    again = split(with_header(fed, ok, sender_kid=enc_kid)).replace(kid=enc_kid)
    both_reject(fed, again.assemble(), KeyMisuse)


def test_header_sender_kid_differs_from_the_frame(fed: Federation, ok: bytes) -> None:
    revoked_kid = fed.key(f"{SENDER}/sign-revoked").kid
    both_reject(fed, with_header(fed, ok, sender_kid=revoked_kid), MalformedEnvelope)
    # ...and the other way round: frame and signatures by spdi-unna, header by jobcenter-unna.
    spdi = fed.key("spdi-unna/sign")
    both_reject(fed, resign(split(ok).replace(kid=spdi.kid), spdi), MalformedEnvelope)


# -- the header ----------------------------------------------------------------------------------

_CHANGES: dict[str, Any] = {
    "v": 2,
    "suite": 2,
    "id": REPLY_TO,
    "type": "handover",
    "sender": "spdi-unna",
    "sender_kid": bytes(16),
    "recipients": [],
    "consent": "c-" + "0" * 32,
    "purpose": "debt-counselling",
    "categories": ["health"],
    "iat": T0,
    "exp": T0 + DAY,
    "clen": 1,
    "commit": bytes(32),
    "reply_to": MESSAGE_ID,
}


@pytest.mark.parametrize("field", list(_CHANGES))
def test_any_header_field_changed_breaks_the_signature(
    fed: Federation, ok: bytes, field: str
) -> None:
    parts = split(ok)
    fields = decode_header(parts.header)
    fields[field] = _CHANGES[field]
    both_reject(fed, parts.replace(header=encode_header(fields)).assemble(), SignatureInvalid)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        b"\x80",
        b"\x90",
        b"\xa5hello",
        b"\x8e",
        b"\xdf\xff\xff\xff\xff",
    ],
    ids=["empty", "reserved-byte", "empty-map", "array", "string", "truncated-map", "huge-map"],
)
def test_malformed_msgpack_header(fed: Federation, ok: bytes, raw: bytes) -> None:
    both_reject(fed, with_header(fed, ok, raw=raw), MalformedEnvelope)


def test_malformed_header_variants(fed: Federation, ok: bytes) -> None:
    raw = split(ok).header
    fields = decode_header(raw)
    for bad in (
        raw[:-1],
        raw + b"\x00",
        msgspec.msgpack.encode(list(fields.values())),
        msgspec.msgpack.encode({k.encode(): v for k, v in fields.items()}),  # bin keys
    ):
        both_reject(fed, with_header(fed, ok, raw=bad), MalformedEnvelope)


@pytest.mark.parametrize(
    "change",
    [
        {"note": "x"},
        {"reply_to": None},
        {"clen": DROP},
        {"commit": DROP},
        {"v": True},
        {"v": 1.0},
        {"iat": float(T0)},
        {"sender_kid": "49" * 16},
        {"commit": bytes(31)},
        {"recipients": [{"agency": RECIPIENTS[0], "kid": bytes(16), "x": 1}]},
        {"recipients": [[RECIPIENTS[0], bytes(16)]]},
        {"categories": "health"},
        {"consent": None},
    ],
    ids=lambda c: ",".join(f"{k}={v!r}"[:30] for k, v in c.items()),
)
def test_unknown_missing_or_mistyped_header_fields(
    fed: Federation, ok: bytes, change: dict[str, Any]
) -> None:
    both_reject(fed, with_header(fed, ok, **change), MalformedEnvelope)


def test_header_string_that_is_not_utf8(fed: Federation, ok: bytes) -> None:
    """msgspec raises UnicodeDecodeError here, not DecodeError: it must still be malformed."""
    raw = split(ok).header
    at = raw.index(b"\xa8referral") + 1
    for bad in (b"\xff", b"\xc3", b"\xed"):  # invalid, truncated, surrogate lead byte
        variant = raw[:at] + bad + raw[at + 1 :]
        both_reject(fed, with_header(fed, ok, raw=variant), MalformedEnvelope)


def test_unknown_field_in_the_middle(fed: Federation, ok: bytes) -> None:
    fields = decode_header(split(ok).header)
    items = list(fields.items())
    items.insert(3, ("note", "x"))
    both_reject(fed, with_header(fed, ok, raw=encode_header(dict(items))), MalformedEnvelope)


def test_non_canonical_headers(fed: Federation, ok: bytes) -> None:
    """Each decodes to the same header as the original; only the bytes differ."""
    raw = split(ok).header
    fields = decode_header(raw)
    assert raw[:4] == b"\x8e\xa1v\x01"  # a fixmap of 14, then "v": 1
    type_at = raw.index(b"\xa8referral")
    kid_at = raw.index(b"\xc4\x10" + fields["sender_kid"])
    reordered = {"suite": fields["suite"], "v": fields["v"]} | {
        k: v for k, v in fields.items() if k not in ("v", "suite")
    }
    variants = {
        "wide int": raw[:3] + b"\xcc\x01" + raw[4:],
        "int64 for a positive int": raw[:3] + b"\xd3" + (1).to_bytes(8, "big") + raw[4:],
        "str8 for a short string": raw[:type_at] + b"\xd9\x08" + raw[type_at + 1 :],
        "bin16 for a kid": raw[:kid_at] + b"\xc5\x00\x10" + raw[kid_at + 2 :],
        "map16 for the header": b"\xde\x00\x0e" + raw[1:],
        "field order": encode_header(reordered),
        "duplicate key": b"\x8f" + raw[1:] + b"\xa1v\x01",
        "str key as bin": b"\x8e\xc4\x01v\x01" + raw[4:],
    }
    for name, variant in variants.items():
        assert variant != raw, name
        with rejected(MalformedEnvelope):
            check(fed, with_header(fed, ok, raw=variant))


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"v": 0},
        {"suite": 2},
        {"id": MESSAGE_ID.upper()},
        {"id": "7f3c8a52-1d4e-1b6f-9a2c-5e8d0b1f4a73"},  # a version 1 UUID
        {"id": MESSAGE_ID + "\n"},
        {"reply_to": "case-4711"},
        {"type": "memo"},
        {"type": "Referral"},
        {"consent": "Herr M., geb. 1970"},
        {"consent": CONSENT + "\n"},
        {"purpose": PURPOSE + "\n"},
        {"purpose": "Addiction"},
        {"categories": ["health\n"]},
        {"categories": []},
        {"categories": ["health", "health"]},
        {"categories": [f"c{i}" for i in range(17)]},
        {"sender": SENDER + "\n"},
        {"sender": "Jobcenter Unna"},
        {"clen": 0},
        {"clen": -1},
        {"iat": T0, "exp": T0},
        {"iat": T0, "exp": T0 - 1},
    ],
    ids=lambda c: ",".join(f"{k}={v!r}"[:40] for k, v in c.items()),
)
def test_header_field_rules(fed: Federation, ok: bytes, change: dict[str, Any]) -> None:
    both_reject(fed, with_header(fed, ok, **change), MalformedEnvelope)


def test_clen_must_match_the_body(fed: Federation, ok: bytes) -> None:
    clen = decode_header(split(ok).header)["clen"]
    for value in (clen - 1, clen + 1, 2**32):
        both_reject(fed, with_header(fed, ok, clen=value), MalformedEnvelope)


def test_a_body_shorter_than_a_tag(fed: Federation, ok: bytes) -> None:
    parts = split(with_header(fed, ok, clen=15))
    both_reject(
        fed,
        resign(parts.replace(body=parts.body[:15]), fed.key(f"{SENDER}/sign")),
        MalformedEnvelope,
    )


def test_recipient_agency_id_with_a_newline(fed: Federation, ok: bytes) -> None:
    recipients = decode_header(split(ok).header)["recipients"]
    recipients[0]["agency"] += "\n"
    both_reject(fed, with_header(fed, ok, recipients=recipients), MalformedEnvelope)


# -- recipients ---------------------------------------------------------------------------------


def test_no_recipients(fed: Federation, ok: bytes) -> None:
    both_reject(fed, build(fed, recipients=[]), RecipientError, "envelope.no_recipients")
    emptied = split(with_header(fed, ok, recipients=[])).replace(wraps=b"")
    both_reject(
        fed, resign(emptied, fed.key(f"{SENDER}/sign")), RecipientError, "envelope.no_recipients"
    )


def test_duplicate_recipients(fed: Federation) -> None:
    twice = build(fed, recipients=[RECIPIENTS[0], RECIPIENTS[1], RECIPIENTS[0]])
    both_reject(fed, twice, RecipientError, "envelope.duplicate_recipient")
    # The same agency with two different keys is still the same recipient twice.
    two_keys = build(
        fed, recipients=[RECIPIENTS[0], (RECIPIENTS[0], fed.record(f"{RECIPIENTS[0]}/enc-revoked"))]
    )
    both_reject(fed, two_keys, RecipientError, "envelope.duplicate_recipient")


def test_too_many_recipients(fed: Federation, ok: bytes) -> None:
    many = [{"agency": f"agency-{i}", "kid": bytes(16)} for i in range(17)]
    both_reject(
        fed, with_header(fed, ok, recipients=many), RecipientError, "envelope.too_many_recipients"
    )
    # A tighter limit applies the same way.
    two = decode_header(split(ok).header)["recipients"]
    with rejected(MalformedEnvelope):  # the two wraps already exceed the frame bound
        check(fed, ok, limits=Limits(max_recipients=1))
    with rejected(RecipientError, "envelope.too_many_recipients"):
        check(fed, with_header(fed, ok, recipients=[*two, *two]), limits=Limits(max_recipients=3))
    # An honest sender learns it before sealing, not as a malformed frame from its own check.
    with rejected(RecipientError, "envelope.too_many_recipients"):
        seal_referral(fed, recipients=RECIPIENTS, limits=Limits(max_recipients=1))


def test_unknown_recipient_agency(fed: Federation) -> None:
    data = build(fed, recipients=[RECIPIENTS[0], (STRANGER, fed.record(f"{STRANGER}/enc"))])
    both_reject(fed, data, RecipientError, "envelope.unknown_recipient")


@pytest.mark.parametrize(
    ("record", "error"),
    [
        (f"{STRANGER}/enc", UnknownKey),
        (f"{RECIPIENTS[0]}/enc-expired", KeyExpired),
        (f"{RECIPIENTS[0]}/enc-revoked", KeyRevoked),
        ("spdi-unna/enc", KeyMisuse),  # another agency's key
        (f"{SENDER}/enc", KeyMisuse),  # the sender's own key
    ],
)
def test_recipient_key_unknown_expired_revoked_or_foreign(
    fed: Federation, record: str, error: type[errors.BridgeError]
) -> None:
    data = build(fed, recipients=[(RECIPIENTS[0], fed.record(record))])
    both_reject(fed, data, error)


def test_signing_key_id_in_a_recipient_position(fed: Federation, ok: bytes) -> None:
    recipients = decode_header(split(ok).header)["recipients"]
    recipients[1]["kid"] = fed.key("spdi-unna/sign").kid
    both_reject(fed, with_header(fed, ok, recipients=recipients), KeyMisuse)


def test_keys_are_checked_at_verification_time(fed: Federation) -> None:
    """Keys are checked at verification time: one that expires while the envelope travels
    makes it unverifiable from then on."""
    data = build(fed, iat=T0 + 300 * DAY, exp=T0 + 301 * DAY)
    check(fed, data, now=T0 + 300 * DAY)
    with rejected(KeyExpired):  # the sender's key (365 days) ends before the envelope
        check(fed, data, now=T0 + 366 * DAY)


# -- wraps --------------------------------------------------------------------------------------


def test_wraps_swapped(fed: Federation, ok: bytes) -> None:
    parts = split(ok)
    first, second = parts.wrap_list()
    swapped = parts.replace(wraps=second + first)
    both_reject(fed, swapped.assemble(), SignatureInvalid)
    both_reject(fed, resign(swapped, fed.key(f"{SENDER}/sign")), MalformedEnvelope)
    # Swapping the header's recipients too makes a consistent envelope, but the header (and
    # so every wrap's HPKE info) changed: nobody can open it.
    fields = decode_header(parts.header)
    fields["recipients"].reverse()
    both = resign(swapped.replace(header=encode_header(fields)), fed.key(f"{SENDER}/sign"))
    check(fed, both)
    for agency in RECIPIENTS:
        with rejected(DecryptionFailed):
            open_as(fed, agency, both)


def test_wraps_dropped_or_duplicated(fed: Federation, ok: bytes) -> None:
    parts = split(ok)
    first, second = parts.wrap_list()
    sign = fed.key(f"{SENDER}/sign")
    for wraps in (
        first,
        second,
        b"",
        first + second + first,
        first + first,
        second + second,
        first + second + second,
    ):
        changed = parts.replace(wraps=wraps)
        both_reject(fed, changed.assemble(), SignatureInvalid)
        both_reject(fed, resign(changed, sign), MalformedEnvelope)


def test_wrap_from_another_envelope(fed: Federation, ok: bytes, other: bytes) -> None:
    parts = split(ok)
    first, second = parts.wrap_list()
    theirs = split(other).wrap_list()[0]
    assert theirs[:16] == first[:16]  # the same recipient key, so the kid order still holds
    spliced = parts.replace(wraps=theirs + second)
    both_reject(fed, spliced.assemble(), SignatureInvalid)
    resigned = resign(spliced, fed.key(f"{SENDER}/sign"))
    check(fed, resigned)  # the broker cannot tell...
    with rejected(DecryptionFailed):  # ...the wrap is bound to the other envelope's header
        open_as(fed, RECIPIENTS[0], resigned)
    assert open_as(fed, RECIPIENTS[1], resigned).plaintext == PLAINTEXT


def test_wrap_tampered(fed: Federation, ok: bytes) -> None:
    parts = split(ok)
    first, second = parts.wrap_list()
    sign = fed.key(f"{SENDER}/sign")
    for pos in (16, 16 + 1087, 16 + 1088, 16 + 1119, 16 + 1120, len(first) - 1):
        tampered = first[:pos] + bytes([first[pos] ^ 0x80]) + first[pos + 1 :]
        data = resign(parts.replace(wraps=tampered + second), sign)
        check(fed, data)
        with rejected(DecryptionFailed):
            open_as(fed, RECIPIENTS[0], data)
    kid_changed = first[:15] + bytes([first[15] ^ 1]) + first[16:]
    both_reject(fed, resign(parts.replace(wraps=kid_changed + second), sign), MalformedEnvelope)


# -- body ---------------------------------------------------------------------------------------


def test_body_truncated_or_extended(fed: Federation, ok: bytes) -> None:
    parts = split(ok)
    sign = fed.key(f"{SENDER}/sign")
    for body in (parts.body[:-1], parts.body[:16], parts.body + b"\x00", parts.body * 2):
        changed = parts.replace(body=body)
        both_reject(fed, changed.assemble(), SignatureInvalid)
        both_reject(fed, resign(changed, sign), MalformedEnvelope)  # clen disagrees
        # With clen adjusted too, only the AEAD tag can tell.
        fixed = split(with_header(fed, changed.assemble(), clen=len(body)))
        data = resign(fixed, sign)
        check(fed, data)
        for agency in RECIPIENTS:
            with rejected(DecryptionFailed):
                open_as(fed, agency, data)


def test_body_bit_flip_resigned(fed: Federation, ok: bytes) -> None:
    parts = split(ok)
    for pos in (0, len(parts.body) // 2, len(parts.body) - 1):
        body = parts.body[:pos] + bytes([parts.body[pos] ^ 1]) + parts.body[pos + 1 :]
        data = resign(parts.replace(body=body), fed.key(f"{SENDER}/sign"))
        check(fed, data)
        for agency in RECIPIENTS:
            with rejected(DecryptionFailed):
                open_as(fed, agency, data)


def test_different_content_keys_for_different_recipients(fed: Federation) -> None:
    """A malicious sender gives each recipient another content key (and so another body).

    The header commits to one key, so exactly the recipients with that key can open it; the
    others get KeyCommitmentMismatch rather than a different plaintext.
    """
    data = build(fed, content_keys=[b"\x01" * 32, b"\x02" * 32])
    check(fed, data)  # nothing for the broker to see
    assert open_as(fed, RECIPIENTS[0], data).plaintext == PLAINTEXT
    with rejected(KeyCommitmentMismatch):
        open_as(fed, RECIPIENTS[1], data)
    reversed_order = build(
        fed, recipients=RECIPIENTS[::-1], content_keys=[b"\x01" * 32, b"\x02" * 32]
    )
    assert open_as(fed, RECIPIENTS[1], reversed_order).plaintext == PLAINTEXT
    with rejected(KeyCommitmentMismatch):
        open_as(fed, RECIPIENTS[0], reversed_order)


# -- opening ------------------------------------------------------------------------------------


def test_opening_by_an_agency_that_is_not_a_recipient(fed: Federation) -> None:
    data = seal_referral(fed, recipients=[RECIPIENTS[0]])
    with rejected(NotARecipient):
        open_as(fed, RECIPIENTS[1], data)
    with rejected(NotARecipient):
        open_as(fed, SENDER, data)
    with rejected(NotARecipient):
        open_as(fed, STRANGER, data)


def test_opening_without_the_named_key(fed: Federation, ok: bytes) -> None:
    """The directory lists the key, but this agency's keyring no longer holds it."""
    only_signing = Keyring(RECIPIENTS[0], [fed.key(f"{RECIPIENTS[0]}/sign")])
    with rejected(UnknownKey):
        open_as(fed, RECIPIENTS[0], ok, keyring=only_signing)
    other_enc = Keyring(RECIPIENTS[0], [fed.key(f"{RECIPIENTS[0]}/enc-revoked")])
    with rejected(UnknownKey):
        open_as(fed, RECIPIENTS[0], ok, keyring=other_enc)


def test_opening_with_a_key_past_its_validity_in_the_keyring(fed: Federation, ok: bytes) -> None:
    key = fed.key(f"{RECIPIENTS[0]}/enc")
    short = PrivateKey(key.agency, key.use, key.seed, key.not_before, fed.now)
    with rejected(UnknownKey):
        open_as(fed, RECIPIENTS[0], ok, keyring=Keyring(RECIPIENTS[0], [short]))


# -- time ---------------------------------------------------------------------------------------


def test_issued_too_far_in_the_future(fed: Federation, ok: bytes) -> None:
    both_reject(fed, build(fed, iat=T0 + 301), NotYetValid)
    iat = decode_header(split(ok).header)["iat"]
    with rejected(NotYetValid):
        check(fed, ok, now=iat - 301)
    check(fed, ok, now=iat - 300)


def test_expired(fed: Federation, ok: bytes) -> None:
    both_reject(fed, build(fed, iat=T0 - 2 * DAY, exp=T0 - 1), EnvelopeExpired)
    both_reject(fed, build(fed, iat=T0 - 2 * DAY, exp=T0), EnvelopeExpired)
    exp = decode_header(split(ok).header)["exp"]
    check(fed, ok, now=exp - 1)
    with rejected(EnvelopeExpired):
        check(fed, ok, now=exp)


def test_lifetime_too_long(fed: Federation) -> None:
    both_reject(fed, build(fed, iat=T0 - 60, exp=T0 - 60 + 30 * DAY + 1), LifetimeTooLong)
    with rejected(LifetimeTooLong):
        check(fed, build(fed, iat=T0 - 60, exp=T0 + DAY), limits=Limits(max_lifetime=DAY))


def test_check_order_within_the_header(fed: Federation, ok: bytes) -> None:
    """Where several rules fail, the first in docs/envelope.md's order decides the code."""
    # sender of another agency (key.misuse) before empty categories (malformed)
    with rejected(KeyMisuse):
        check(fed, with_header(fed, ok, sender="spdi-unna", categories=[]))
    # categories before recipients
    with rejected(MalformedEnvelope):
        check(fed, with_header(fed, ok, categories=[], recipients=[]))
    # recipients before time
    with rejected(RecipientError, "envelope.no_recipients"):
        check(fed, with_header(fed, ok, recipients=[], iat=T0 + DAY))
    # future before lifetime before expiry
    with rejected(NotYetValid):
        check(fed, with_header(fed, ok, iat=T0 + DAY, exp=T0 + 60 * DAY))
    with rejected(LifetimeTooLong):
        check(fed, with_header(fed, ok, iat=T0 - 60 * DAY, exp=T0 - DAY))
    # the sender's key before the signature, the signature before the header
    with rejected(KeyRevoked):
        check(
            fed, split(ok).replace(kid=fed.key(f"{SENDER}/sign-revoked").kid, header=b"").assemble()
        )
    with rejected(SignatureInvalid):
        check(fed, split(ok).replace(header=b"\xc1").assemble())


# -- the stored vectors -------------------------------------------------------------------------


def _load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


@pytest.fixture(scope="module")
def vector_fed() -> tuple[Directory, dict[str, Keyring]]:
    """The federation rebuilt from the stored files only: directory, anchor and seeds."""
    document = _load("federation.json")
    anchor = msgspec.json.decode(
        (VECTORS / "anchor.json").read_bytes(), type=type(federation().record("anchor"))
    )
    directory = Directory.load(
        (VECTORS / "directory.bin").read_bytes(), anchor.check(), now=document["now"]
    )
    keys: dict[str, list[PrivateKey]] = {}
    for entry in document["keys"]:
        key = PrivateKey(
            entry["agency"],
            entry["use"],
            bytes.fromhex(entry["seed_hex"]),
            entry["not_before"],
            entry["not_after"],
        )
        keys.setdefault(key.agency, []).append(key)
    return directory, {agency: Keyring(agency, ks) for agency, ks in keys.items()}


def test_vector_keys_come_from_their_seeds(
    vector_fed: tuple[Directory, dict[str, Keyring]],
) -> None:
    document = _load("federation.json")
    for entry in document["keys"]:
        key = PrivateKey(entry["agency"], entry["use"], bytes.fromhex(entry["seed_hex"]), 0, 1)
        assert key.public_record().kid == entry["kid"], entry["label"]
        assert key.public_record().public == entry["public_base64"], entry["label"]
        directory, _ = vector_fed
        found = directory.key(bytes.fromhex(entry["kid"]))
        assert (found is not None) == entry["in_directory"], entry["label"]
        assert directory.is_revoked(bytes.fromhex(entry["kid"])) == entry["revoked"], entry["label"]
    # The generator and the tests share the federation: the same seeds give the same kids.
    fed = federation(document["now"])
    assert {k["label"]: k["kid"] for k in document["keys"]} == {
        label: key.public_record().kid for label, key in fed.keys.items()
    }


@pytest.mark.parametrize("name", ["referral-ok", "feedback-reply-ok"])
def test_valid_vectors(vector_fed: tuple[Directory, dict[str, Keyring]], name: str) -> None:
    directory, keyrings = vector_fed
    expected = _load(f"{name}.json")
    data = (VECTORS / expected["file"]).read_bytes()
    assert len(data) == expected["size"]
    envelope = verify(data, directory, now=expected["verify_at"])
    header = msgspec.to_builtins(envelope.header)
    header["sender_kid"] = envelope.header.sender_kid.hex()
    header["commit"] = envelope.header.commit.hex()
    header["recipients"] = [
        {"agency": r.agency, "kid": r.kid.hex()} for r in envelope.header.recipients
    ]
    assert header == expected["header"]
    assert envelope.header_hash.hex() == expected["header_sha256"]
    assert split(data).header.hex() == expected["header_hex"]
    for agency, want in expected["recipients"].items():
        opened = open_envelope(data, keyrings[agency], directory, now=expected["verify_at"])
        assert opened.plaintext.hex() == want["plaintext_hex"] == expected["plaintext_hex"]


def _negative_entries() -> list[dict[str, Any]]:
    return list(_load("negative.json")["vectors"])


@pytest.mark.parametrize("entry", _negative_entries(), ids=lambda e: e["name"])
def test_negative_vectors(
    vector_fed: tuple[Directory, dict[str, Keyring]], entry: dict[str, Any]
) -> None:
    directory, keyrings = vector_fed
    data = (VECTORS / entry["file"]).read_bytes()
    limits = Limits(**entry.get("limits", {}))
    error = getattr(errors, entry["error"])
    now = entry["now"]
    if entry["check"] == "verify":
        with rejected(error, entry["reason"]):
            verify(data, directory, now=now, limits=limits)
        # open verifies first, so every recipient sees the same rejection
        for agency in RECIPIENTS:
            with rejected(error, entry["reason"]):
                open_envelope(data, keyrings[agency], directory, now=now, limits=limits)
    else:
        with rejected(error, entry["reason"]):
            open_envelope(data, keyrings[entry["as"]], directory, now=now, limits=limits)
        if entry["verifies"]:
            verify(data, directory, now=now, limits=limits)
    for agency in entry.get("opens_for", []):
        open_envelope(data, keyrings[agency], directory, now=now, limits=limits)


def test_negative_vectors_cover_every_rejection() -> None:
    seen = {(e["error"], e["reason"]) for e in _negative_entries()}
    expected = {
        (cls.__name__, cls.reason)
        for cls in (
            TooLarge, MalformedEnvelope, UnsupportedVersion, UnsupportedSuite, UnknownKey,
            KeyMisuse, KeyRevoked, KeyExpired, SignatureInvalid, NotYetValid, EnvelopeExpired,
            LifetimeTooLong, NotARecipient, DecryptionFailed, KeyCommitmentMismatch,
        )
    } | {
        ("RecipientError", f"envelope.{r}")
        for r in ("no_recipients", "too_many_recipients", "duplicate_recipient",
                  "unknown_recipient")
    }  # fmt: skip
    assert seen == expected


def test_vectors_stay_small() -> None:
    total = sum(p.stat().st_size for p in VECTORS.rglob("*") if p.is_file())
    assert total < 2 * 1024 * 1024
