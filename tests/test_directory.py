"""The signed key directory fails closed: every bad input raises `DirectoryError` with a reason.

Bad bodies are built by encoding plain dicts and signing them with `sign_document`, so that the
*loader* (not `sign_directory`'s own checks) is what refuses them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bridge.crypto import PrivateKey, generate_key, sign_document
from bridge.errors import DirectoryError, UnknownKey
from bridge.federation.directory import (
    CONTEXT,
    MAGIC,
    MAX_DIRECTORY_BYTES,
    AgencyEntry,
    Directory,
    DirectoryBody,
    SerialState,
    load_anchor,
    sign_directory,
)

T0 = 1_750_000_000
DAY = 86400


@pytest.fixture(scope="module")
def anchor() -> PrivateKey:
    return generate_key("test-fed", "sign", T0 - DAY, T0 + 1000 * DAY)


@pytest.fixture(scope="module")
def keys() -> dict[str, list[PrivateKey]]:
    return {
        agency: [
            generate_key(agency, "sign", T0, T0 + 365 * DAY),
            generate_key(agency, "enc", T0, T0 + 365 * DAY),
        ]
        for agency in ("jc-mitte", "sucht-nord")
    }


@pytest.fixture(scope="module")
def body(keys: dict[str, list[PrivateKey]]) -> DirectoryBody:
    return DirectoryBody(
        v=1,
        federation="test-fed",
        serial=5,
        issued_at=T0,
        expires_at=T0 + 30 * DAY,
        agencies=[
            AgencyEntry(
                id=agency,
                name=f"Agency {agency}",
                role="counselling",
                keys=[k.public_record() for k in held],
            )
            for agency, held in keys.items()
        ],
        revoked=[],
    )


@pytest.fixture(scope="module")
def signed(body: DirectoryBody, anchor: PrivateKey) -> bytes:
    return sign_directory(body, anchor)


def _raw(body: DirectoryBody) -> dict[str, Any]:
    raw: dict[str, Any] = msgspec.to_builtins(body)
    return raw


def _sign_raw(raw: object, anchor: PrivateKey, context: bytes = CONTEXT) -> bytes:
    return sign_document(MAGIC, context, msgspec.msgpack.encode(raw), anchor)


def _rejects(data: bytes, anchor: PrivateKey, reason: str, **kwargs: Any) -> DirectoryError:
    with pytest.raises(DirectoryError) as caught:
        Directory.load(data, anchor.public_record(), now=kwargs.pop("now", T0 + DAY), **kwargs)
    assert caught.value.reason == reason, caught.value
    return caught.value


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# -- the good case ----------------------------------------------------------------------------


def test_loads_and_answers_lookups(
    signed: bytes, anchor: PrivateKey, keys: dict[str, list[PrivateKey]]
) -> None:
    directory = Directory.load(signed, anchor.public_record(), now=T0 + DAY)
    assert directory.serial == 5
    assert [a.id for a in directory.agencies()] == ["jc-mitte", "sucht-nord"]
    sign, enc = keys["jc-mitte"]
    assert directory.key(sign.kid) == ("jc-mitte", sign.public_record())
    assert directory.key(b"\x00" * 16) is None
    assert directory.has_agency("sucht-nord")
    assert not directory.has_agency("nobody")
    assert directory.current_key("jc-mitte", "enc", T0 + DAY).kid_bytes == enc.kid
    assert "serial=5" in repr(directory)


def test_dict_encoding_matches_the_struct_encoding(body: DirectoryBody, signed: bytes) -> None:
    # The bypass helper below must produce exactly what sign_directory signs, or the negative
    # tests would fail for the wrong reason (non-canonical encoding).
    assert msgspec.msgpack.encode(_raw(body)) in signed


def test_revoked_key_is_never_current(
    body: DirectoryBody, anchor: PrivateKey, keys: dict[str, list[PrivateKey]]
) -> None:
    sign, enc = keys["jc-mitte"]
    revoked = msgspec.structs.replace(body, revoked=[enc.public_record().kid])
    directory = Directory.load(
        sign_directory(revoked, anchor), anchor.public_record(), now=T0 + DAY
    )
    assert directory.is_revoked(enc.kid)
    assert not directory.is_revoked(sign.kid)
    with pytest.raises(UnknownKey):
        directory.current_key("jc-mitte", "enc", T0 + DAY)
    with pytest.raises(UnknownKey):
        directory.current_key("nobody", "enc", T0 + DAY)


# -- signatures -------------------------------------------------------------------------------

_HEAD = 4 + 1 + 16 + 4


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        (lambda n: 0, "directory.malformed"),  # magic
        (lambda n: 4, "directory.malformed"),  # version
        (lambda n: 5, "directory.signature_invalid"),  # signer kid: not the anchor
        (lambda n: 20, "directory.signature_invalid"),
        (lambda n: 24, "directory.malformed"),  # body length: frame no longer adds up
        (lambda n: _HEAD, "directory.signature_invalid"),  # first body byte
        (lambda n: n // 2, "directory.signature_invalid"),  # inside the body
        (lambda n: n - 3309 - 64, "directory.signature_invalid"),  # Ed25519 signature
        (lambda n: n - 3309 - 1, "directory.signature_invalid"),
        (lambda n: n - 3309, "directory.signature_invalid"),  # ML-DSA-65 signature
        (lambda n: n - 1, "directory.signature_invalid"),
    ],
    ids=[
        "magic",
        "version",
        "kid-first",
        "kid-last",
        "length",
        "body-first",
        "body-middle",
        "ed25519-first",
        "ed25519-last",
        "mldsa-first",
        "mldsa-last",
    ],
)
def test_bit_flip_is_rejected(signed: bytes, anchor: PrivateKey, where: Any, reason: str) -> None:
    _rejects(_flip(signed, where(len(signed))), anchor, reason)


def test_bit_flip_anywhere_is_rejected(signed: bytes, anchor: PrivateKey) -> None:
    public = anchor.public_record()
    for index in range(0, len(signed), 61):
        with pytest.raises(DirectoryError) as caught:
            Directory.load(_flip(signed, index), public, now=T0 + DAY)
        assert caught.value.reason in {"directory.signature_invalid", "directory.malformed"}


def test_signature_by_another_anchor(body: DirectoryBody, anchor: PrivateKey) -> None:
    other = generate_key("test-fed", "sign", T0 - DAY, T0 + 1000 * DAY)
    _rejects(sign_directory(body, other), anchor, "directory.signature_invalid")


def test_another_anchor_claiming_the_pinned_kid(body: DirectoryBody, anchor: PrivateKey) -> None:
    other = generate_key("test-fed", "sign", T0 - DAY, T0 + 1000 * DAY)
    forged = sign_directory(body, other)
    # Put the pinned anchor's kid in the frame and re-sign with the other key.
    encoded = forged[_HEAD : _HEAD + struct.unpack(">I", forged[21:25])[0]]
    head = MAGIC + b"\x01" + anchor.kid + struct.pack(">I", len(encoded))
    ed, ml = other.signer().sign(CONTEXT, head + encoded)
    _rejects(head + encoded + ed + ml, anchor, "directory.signature_invalid")


def test_signature_under_another_context(body: DirectoryBody, anchor: PrivateKey) -> None:
    data = _sign_raw(_raw(body), anchor, context=b"bridge/envelope/v1")
    _rejects(data, anchor, "directory.signature_invalid")


# -- time and rollback ------------------------------------------------------------------------


def test_expired(signed: bytes, anchor: PrivateKey) -> None:
    Directory.load(signed, anchor.public_record(), now=T0 + 30 * DAY - 1)
    _rejects(signed, anchor, "directory.expired", now=T0 + 30 * DAY)
    _rejects(signed, anchor, "directory.expired", now=T0 + 300 * DAY)


def test_anchor_no_longer_valid(body: DirectoryBody) -> None:
    short = generate_key("test-fed", "sign", T0 - DAY, T0 + DAY)
    _rejects(sign_directory(body, short), short, "directory.anchor", now=T0 + 2 * DAY)


def test_rollback_by_min_serial(signed: bytes, anchor: PrivateKey) -> None:
    assert Directory.load(signed, anchor.public_record(), now=T0, min_serial=5).serial == 5
    _rejects(signed, anchor, "directory.rollback", min_serial=6)


def test_rollback_by_serial_state(tmp_path: Path, body: DirectoryBody, anchor: PrivateKey) -> None:
    anchor_pub = anchor.public_record()
    state = SerialState(tmp_path / "serial")
    assert state.highest() == 0
    paths = {}
    for serial in (4, 5, 6):
        paths[serial] = tmp_path / f"dir-{serial}.bin"
        paths[serial].write_bytes(
            sign_directory(msgspec.structs.replace(body, serial=serial), anchor)
        )
    Directory.load_file(paths[5], anchor_pub, state=state, now=T0 + DAY)
    assert state.highest() == 5
    with pytest.raises(DirectoryError) as caught:
        Directory.load_file(paths[4], anchor_pub, state=state, now=T0 + DAY)
    assert caught.value.reason == "directory.rollback"
    assert state.highest() == 5
    Directory.load_file(paths[5], anchor_pub, state=state, now=T0 + DAY)  # the same again is fine
    Directory.load_file(paths[6], anchor_pub, state=state, now=T0 + DAY)
    assert SerialState(tmp_path / "serial").highest() == 6


def test_corrupt_serial_state(tmp_path: Path, signed: bytes, anchor: PrivateKey) -> None:
    (tmp_path / "serial").write_text("five\n")
    (tmp_path / "dir.bin").write_bytes(signed)
    with pytest.raises(DirectoryError) as caught:
        Directory.load_file(
            tmp_path / "dir.bin",
            anchor.public_record(),
            state=SerialState(tmp_path / "serial"),
            now=T0 + DAY,
        )
    assert caught.value.reason == "directory.state"


def test_missing_file(tmp_path: Path, anchor: PrivateKey) -> None:
    with pytest.raises(DirectoryError) as caught:
        Directory.load_file(tmp_path / "absent.bin", anchor.public_record(), now=T0)
    assert caught.value.reason == "directory.missing"


# -- bodies that are signed but wrong ---------------------------------------------------------


def _agency(raw: dict[str, Any], index: int = 0) -> dict[str, Any]:
    agency: dict[str, Any] = raw["agencies"][index]
    return agency


@pytest.mark.parametrize("bad_id", ["JC-Mitte", "jc.mitte", "jc-*", "jc>", "-jc", "", "a" * 64])
def test_malformed_agency_id_inside_signed_body(
    body: DirectoryBody, anchor: PrivateKey, bad_id: str
) -> None:
    raw = _raw(body)
    _agency(raw)["id"] = bad_id
    _rejects(_sign_raw(raw, anchor), anchor, "directory.malformed")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("role", "police"),
        ("name", ""),
        ("name", "x" * 201),
    ],
)
def test_malformed_agency_fields_inside_signed_body(
    body: DirectoryBody, anchor: PrivateKey, field: str, value: str
) -> None:
    raw = _raw(body)
    _agency(raw)[field] = value
    _rejects(_sign_raw(raw, anchor), anchor, "directory.malformed")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("v", 2),
        ("federation", "Test.Fed"),
        ("serial", 0),
        ("expires_at", T0),  # not after issued_at
        ("revoked", ["not-a-kid"]),
        ("revoked", ["ab" * 15]),
        ("agencies", "none"),
    ],
)
def test_malformed_top_level_fields(
    body: DirectoryBody, anchor: PrivateKey, field: str, value: object
) -> None:
    raw = _raw(body)
    raw[field] = value
    _rejects(_sign_raw(raw, anchor), anchor, "directory.malformed")


def test_duplicate_agency(body: DirectoryBody, anchor: PrivateKey) -> None:
    raw = _raw(body)
    copy = dict(_agency(raw, 0))
    copy["keys"] = _agency(raw, 1)["keys"]  # distinct keys: only the id repeats
    raw["agencies"] = [_agency(raw, 0), copy]
    error = _rejects(_sign_raw(raw, anchor), anchor, "directory.malformed")
    assert "listed twice" in str(error)


def test_duplicate_key_across_agencies(body: DirectoryBody, anchor: PrivateKey) -> None:
    raw = _raw(body)
    _agency(raw, 1)["keys"] = _agency(raw, 0)["keys"]
    error = _rejects(_sign_raw(raw, anchor), anchor, "directory.malformed")
    assert "listed twice" in str(error)


def test_duplicate_key_in_another_spelling(body: DirectoryBody, anchor: PrivateKey) -> None:
    raw = _raw(body)
    spelled = [dict(k, kid=k["kid"].upper()) for k in _agency(raw, 0)["keys"]]
    _agency(raw, 1)["keys"] = spelled
    _rejects(_sign_raw(raw, anchor), anchor, "directory.bad_key")


def test_kid_not_matching_its_public_key(body: DirectoryBody, anchor: PrivateKey) -> None:
    raw = _raw(body)
    first, second = _agency(raw, 0)["keys"]
    first["kid"] = _agency(raw, 1)["keys"][0]["kid"]
    _rejects(_sign_raw(raw, anchor), anchor, "directory.bad_key")
    assert second  # the other key is untouched


def test_public_key_of_wrong_length(body: DirectoryBody, anchor: PrivateKey) -> None:
    raw = _raw(body)
    key = _agency(raw, 0)["keys"][0]
    key["public"] = key["public"][:-8]
    _rejects(_sign_raw(raw, anchor), anchor, "directory.bad_key")


def test_unknown_field(body: DirectoryBody, anchor: PrivateKey) -> None:
    raw = _raw(body)
    raw["extra"] = 1
    _rejects(_sign_raw(raw, anchor), anchor, "directory.malformed")


def test_non_canonical_encoding(body: DirectoryBody, anchor: PrivateKey) -> None:
    raw = _raw(body)
    reordered = dict(reversed(list(raw.items())))
    error = _rejects(_sign_raw(reordered, anchor), anchor, "directory.malformed")
    assert "canonical" in str(error)


def test_non_minimal_integer(body: DirectoryBody, anchor: PrivateKey) -> None:
    encoded = msgspec.msgpack.encode(_raw(body))
    minimal = b"\xa6serial\x05"
    assert encoded.count(minimal) == 1
    # The same serial as a uint64 (0xcf): decodes to the same value, encodes differently.
    padded = encoded.replace(minimal, b"\xa6serial\xcf" + (5).to_bytes(8, "big"))
    error = _rejects(sign_document(MAGIC, CONTEXT, padded, anchor), anchor, "directory.malformed")
    assert "canonical" in str(error)


def test_body_that_is_not_msgpack(anchor: PrivateKey) -> None:
    _rejects(sign_document(MAGIC, CONTEXT, b"\xc1", anchor), anchor, "directory.malformed")


# -- framing ----------------------------------------------------------------------------------


def test_trailing_bytes(signed: bytes, anchor: PrivateKey) -> None:
    _rejects(signed + b"\x00", anchor, "directory.malformed")


@pytest.mark.parametrize("keep", [0, 3, _HEAD, _HEAD + 100, -1, -3309])
def test_truncated(signed: bytes, anchor: PrivateKey, keep: int) -> None:
    _rejects(signed[:keep], anchor, "directory.malformed")


def test_oversize(signed: bytes, anchor: PrivateKey) -> None:
    error = _rejects(
        signed + b"\x00" * (MAX_DIRECTORY_BYTES - len(signed) + 1), anchor, "directory.malformed"
    )
    assert "exceeds" in str(error)


@pytest.mark.parametrize("magic", [b"BRDG", b"brdd", b"\x00\x00\x00\x00"])
def test_wrong_magic(body: DirectoryBody, anchor: PrivateKey, magic: bytes) -> None:
    # Correctly signed, but as another kind of document.
    data = sign_document(magic, CONTEXT, msgspec.msgpack.encode(_raw(body)), anchor)
    _rejects(data, anchor, "directory.malformed")


def test_unsupported_frame_version(signed: bytes, anchor: PrivateKey) -> None:
    _rejects(signed[:4] + b"\x02" + signed[5:], anchor, "directory.malformed")


# -- signing refuses what loading would refuse ------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"id": "JC.Mitte"},
        {"role": "police"},
        {"name": ""},
    ],
)
def test_sign_directory_refuses_invalid_entries(
    body: DirectoryBody, anchor: PrivateKey, change: dict[str, str]
) -> None:
    # Struct constructors do not enforce field constraints; sign_directory must.
    bad = msgspec.structs.replace(body.agencies[0], **change)
    with pytest.raises(DirectoryError) as caught:
        sign_directory(msgspec.structs.replace(body, agencies=[bad]), anchor)
    assert caught.value.reason == "directory.malformed"


def test_sign_directory_refuses_duplicates_and_bad_dates(
    body: DirectoryBody, anchor: PrivateKey
) -> None:
    doubled = msgspec.structs.replace(body, agencies=[body.agencies[0], body.agencies[0]])
    with pytest.raises(DirectoryError):
        sign_directory(doubled, anchor)
    backwards = msgspec.structs.replace(body, expires_at=body.issued_at)
    with pytest.raises(DirectoryError):
        sign_directory(backwards, anchor)


# -- the pinned anchor ------------------------------------------------------------------------


def test_load_anchor(tmp_path: Path, anchor: PrivateKey) -> None:
    path = tmp_path / "anchor.pub.json"
    path.write_bytes(msgspec.json.encode(anchor.public_record()))
    assert load_anchor(path) == anchor.public_record()


def _anchor_error(path: Path) -> str:
    with pytest.raises(DirectoryError) as caught:
        load_anchor(path)
    return caught.value.reason


def test_load_anchor_refusals(tmp_path: Path, anchor: PrivateKey) -> None:
    path = tmp_path / "anchor.pub.json"
    assert _anchor_error(path) == "directory.anchor"  # missing
    path.write_text("{not json")
    assert _anchor_error(path) == "directory.anchor"
    enc = generate_key("test-fed", "enc", T0, T0 + DAY)
    path.write_bytes(msgspec.json.encode(enc.public_record()))
    assert _anchor_error(path) == "directory.anchor"
    record = json.loads(msgspec.json.encode(anchor.public_record()))
    record["kid"] = "00" * 16
    path.write_text(json.dumps(record))
    assert _anchor_error(path) == "directory.anchor"
