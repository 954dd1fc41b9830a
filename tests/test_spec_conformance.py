"""A second envelope reader, written from docs/envelope.md alone, run against the stored vectors.

Nothing here imports bridge: the reader uses `struct`, `hashlib`, `hmac`, msgspec's untyped
msgpack decoder and `cryptography`'s primitives (ML-KEM, X25519, Ed25519, ML-DSA, AES-GCM), and
does HPKE and X-Wing by hand. If it verifies and opens the valid vectors and gives every negative
vector the reason code its manifest names, the specification is precise enough to implement from,
including the order of the checks. Where this file had to guess, the specification has a gap.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VECTORS = Path(__file__).parent / "assets" / "vectors"

# -- constants, from docs/envelope.md -------------------------------------------------------------

MAGIC = b"BRDG"
PREFIX = 22
ED_SIG, ML_SIG = 64, 3309
SIGS = ED_SIG + ML_SIG
MIN_LEN = 3423
ENC_LEN = 1120
WRAP_ENTRY = 16 + ENC_LEN + 32 + 16
CONTEXT = b"bridge/envelope/v1"
DEFAULT_LIMITS = {
    "max_envelope_bytes": 1048576,
    "max_header_bytes": 16384,
    "max_recipients": 16,
    "max_categories": 16,
    "max_clock_skew": 300,
    "max_lifetime": 2592000,
    "max_attachments": 16,
    "max_attachment_bytes": 104857600,
    "max_attachments_total": 262144000,
}
FIELDS = (
    "v", "suite", "id", "type", "sender", "sender_kid", "recipients", "consent", "purpose",
    "categories", "iat", "exp", "clen", "commit", "reply_to", "attachments",
)  # fmt: skip
OPTIONAL = ("reply_to", "attachments")
MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
AGENCY = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
CONSENT = re.compile(r"c-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CODE = re.compile(r"[a-z][a-z0-9-]{0,47}")
TYPES = ("referral", "handover", "feedback", "receipt")


class Reject(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


MALFORMED = "envelope.malformed"


def malformed(ok: bool) -> None:
    if not ok:
        raise Reject(MALFORMED)


# -- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    agency: str
    use: str
    public: bytes
    not_before: int
    not_after: int
    seed: bytes


@dataclass(frozen=True)
class KeyDirectory:
    """What verify needs from the signed key directory (read here from federation.json)."""

    keys: dict[bytes, Key]
    revoked: frozenset[bytes]
    agencies: frozenset[str]


def kid(use: str, public: bytes) -> bytes:
    return hashlib.sha256(
        b"bridge/kid/v1" + (b"\x01" if use == "sign" else b"\x02") + public
    ).digest()[:16]


def load_keys() -> tuple[KeyDirectory, dict[bytes, Key]]:
    document = json.loads((VECTORS / "federation.json").read_text())
    listed: dict[bytes, Key] = {}
    every: dict[bytes, Key] = {}
    revoked = set()
    for entry in document["keys"]:
        key = Key(
            entry["agency"],
            entry["use"],
            base64.b64decode(entry["public_base64"]),
            entry["not_before"],
            entry["not_after"],
            bytes.fromhex(entry["seed_hex"]),
        )
        k = bytes.fromhex(entry["kid"])
        every[k] = key
        if entry["in_directory"]:
            listed[k] = key
        if entry["revoked"]:
            revoked.add(k)
    agencies = frozenset(key.agency for key in listed.values())
    return KeyDirectory(listed, frozenset(revoked), agencies), every


def check_key(directory: KeyDirectory, k: bytes, use: str, agency: str | None, now: int) -> Key:
    key = directory.keys.get(k)
    if key is None:
        raise Reject("key.unknown")
    if key.use != use:
        raise Reject("key.misuse")
    if agency is not None and key.agency != agency:
        raise Reject("key.misuse")
    if k in directory.revoked:
        raise Reject("key.revoked")
    if not key.not_before <= now < key.not_after:
        raise Reject("key.expired")
    return key


# -- canonical msgpack, as the specification lists it ---------------------------------------------


def canonical(value: Any) -> bytes:
    if isinstance(value, dict):
        n = len(value)
        head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return head + b"".join(canonical(k) + canonical(v) for k, v in value.items())
    if isinstance(value, list):
        n = len(value)
        head = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return head + b"".join(canonical(v) for v in value)
    if isinstance(value, str):
        raw = value.encode()
        n = len(raw)
        if n < 32:
            return bytes([0xA0 | n]) + raw
        if n < 256:
            return b"\xd9" + bytes([n]) + raw
        return (
            b"\xda" + struct.pack(">H", n) if n < 65536 else b"\xdb" + struct.pack(">I", n)
        ) + raw
    if isinstance(value, bytes):
        n = len(value)
        if n < 256:
            return b"\xc4" + bytes([n]) + value
        return (
            b"\xc5" + struct.pack(">H", n) if n < 65536 else b"\xc6" + struct.pack(">I", n)
        ) + value
    if type(value) is int:
        if 0 <= value < 128:
            return bytes([value])
        if value >= 0:
            for tag, fmt, top in ((0xCC, ">B", 2**8), (0xCD, ">H", 2**16), (0xCE, ">I", 2**32)):
                if value < top:
                    return bytes([tag]) + struct.pack(fmt, value)
            return b"\xcf" + struct.pack(">Q", value)
        if value >= -32:
            return struct.pack(">b", value)
        for tag, fmt, low in (
            (0xD0, ">b", -(2**7)),
            (0xD1, ">h", -(2**15)),
            (0xD2, ">i", -(2**31)),
        ):
            if value >= low:
                return bytes([tag]) + struct.pack(fmt, value)
        return b"\xd3" + struct.pack(">q", value)
    raise Reject(MALFORMED)


def is_int(value: Any) -> bool:
    return type(value) is int


def is_str(value: Any, pattern: re.Pattern[str]) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def is_bin(value: Any, length: int) -> bool:
    return isinstance(value, bytes) and len(value) == length


def decode_header(raw: bytes) -> dict[str, Any]:
    """Step V9: msgpack with the schema's types and constraints, then re-encode and compare."""
    try:
        header = msgspec.msgpack.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise Reject(MALFORMED) from exc
    malformed(isinstance(header, dict) and all(isinstance(k, str) for k in header))
    required = [f for f in FIELDS if f not in OPTIONAL]
    malformed(all(name in header for name in required))
    malformed(set(header) <= set(FIELDS))
    malformed(list(header) == [f for f in FIELDS if f in header])
    malformed(all(is_int(header[f]) for f in ("v", "suite", "iat", "exp", "clen")))
    malformed(
        all(isinstance(header[f], str) for f in ("id", "type", "sender", "consent", "purpose"))
    )
    malformed(is_bin(header["sender_kid"], 16) and is_bin(header["commit"], 32))
    malformed(isinstance(header["recipients"], list) and isinstance(header["categories"], list))
    for r in header["recipients"]:
        malformed(isinstance(r, dict) and list(r) == ["agency", "kid"])
        malformed(isinstance(r["agency"], str) and is_bin(r["kid"], 16))
    malformed(all(isinstance(c, str) for c in header["categories"]))
    malformed(isinstance(header.get("reply_to", ""), str))
    attachments = header.get("attachments", [None])
    malformed(isinstance(attachments, list) and len(attachments) > 0)
    for a in header.get("attachments", []):
        malformed(isinstance(a, dict) and list(a) == ["type", "size", "chunk", "meta"])
        malformed(is_str(a["type"], MEDIA_TYPE) and is_int(a["size"]) and a["size"] >= 0)
        malformed(is_int(a["chunk"]) and isinstance(a["meta"], bytes))
        malformed(32 + 1 + 16 <= len(a["meta"]) <= 32 + 255 + 16)
    malformed(canonical(header) == raw)
    return header


# -- HKDF, HPKE with X-Wing ---------------------------------------------------------------------


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(hkdf_extract(b"", ikm), info, length)


SUITE_ID = b"HPKE" + struct.pack(">HHH", 0x647A, 0x0001, 0x0002)


def labeled_extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hkdf_extract(salt, b"HPKE-v1" + SUITE_ID + label + ikm)


def labeled_expand(prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(
        prk, struct.pack(">H", length) + b"HPKE-v1" + SUITE_ID + label + info, length
    )


def xwing_decaps(seed: bytes, public: bytes, enc: bytes) -> bytes:
    expanded = hashlib.shake_256(seed).digest(96)
    sk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    pk_x = public[1184:]
    assert sk_x.public_key().public_bytes_raw() == pk_x
    ct_m, ct_x = enc[:1088], enc[1088:]
    ss_m = sk_m.decapsulate(ct_m)
    try:
        ss_x = sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    except ValueError:  # an all-zero shared secret: this reader treats it as a failed wrap
        return b""
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + b"\\.//^\\").digest()


def hpke_open(seed: bytes, public: bytes, wrapped: bytes, info: bytes) -> bytes | None:
    shared = xwing_decaps(seed, public, wrapped[:ENC_LEN])
    if not shared:
        return None
    context = (
        b"\x00"
        + labeled_extract(b"", b"psk_id_hash", b"")
        + labeled_extract(b"", b"info_hash", info)
    )
    secret = labeled_extract(shared, b"secret", b"")
    key = labeled_expand(secret, b"key", context, 32)
    nonce = labeled_expand(secret, b"base_nonce", context, 12)
    try:
        return AESGCM(key).decrypt(nonce, wrapped[ENC_LEN:], b"")
    except InvalidTag:
        return None


# -- verify and open ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    header: dict[str, Any]
    header_hash: bytes
    wraps: bytes
    body: bytes


def verify(data: bytes, directory: KeyDirectory, now: int, limits: dict[str, int]) -> Verified:
    if len(data) > limits["max_envelope_bytes"]:
        raise Reject("envelope.too_large")
    malformed(len(data) >= MIN_LEN and data[:4] == MAGIC)
    if data[4] != 1:
        raise Reject("envelope.unsupported_version")
    if data[5] != 1:
        raise Reject("envelope.unsupported_suite")
    frame_kid = data[6:PREFIX]
    end, pos = len(data) - SIGS, PREFIX
    found = []
    for bound in (
        limits["max_header_bytes"],
        limits["max_recipients"] * WRAP_ENTRY,
        limits["max_envelope_bytes"],
    ):
        malformed(pos + 4 <= end)
        (length,) = struct.unpack_from(">I", data, pos)
        malformed(length <= bound and pos + 4 + length <= end)
        found.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    malformed(pos == end)
    raw, wraps, body = found
    signed, ed_sig, ml_sig = data[:end], data[end : end + ED_SIG], data[end + ED_SIG :]

    sender = check_key(directory, frame_kid, "sign", None, now)
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(sender.public[:32]).verify(
            ed_sig, bytes([len(CONTEXT)]) + CONTEXT + signed
        )
        mldsa.MLDSA65PublicKey.from_public_bytes(sender.public[32:]).verify(ml_sig, signed, CONTEXT)
    except InvalidSignature as exc:
        raise Reject("envelope.signature_invalid") from exc

    h = decode_header(raw)
    malformed(h["v"] == 1 and h["suite"] == 1)
    malformed(is_str(h["id"], UUID4) and is_str(h.get("reply_to", h["id"]), UUID4))
    malformed(
        is_str(h["sender"], AGENCY) and all(is_str(r["agency"], AGENCY) for r in h["recipients"])
    )
    malformed(is_str(h["consent"], CONSENT) and is_str(h["purpose"], CODE))
    malformed(all(is_str(c, CODE) for c in h["categories"]))
    malformed(h["type"] in TYPES)
    malformed(h["sender_kid"] == frame_kid)
    if h["sender"] != sender.agency:
        raise Reject("key.misuse")
    categories = h["categories"]
    malformed(1 <= len(categories) <= limits["max_categories"])
    malformed(len(set(categories)) == len(categories))
    recipients = h["recipients"]
    if not recipients:
        raise Reject("envelope.no_recipients")
    if len(recipients) > limits["max_recipients"]:
        raise Reject("envelope.too_many_recipients")
    if len({r["agency"] for r in recipients}) != len(recipients):
        raise Reject("envelope.duplicate_recipient")
    for r in recipients:
        if r["agency"] not in directory.agencies:
            raise Reject("envelope.unknown_recipient")
        check_key(directory, r["kid"], "enc", r["agency"], now)
    malformed(len(wraps) == WRAP_ENTRY * len(recipients))
    malformed(
        all(
            wraps[i * WRAP_ENTRY : i * WRAP_ENTRY + 16] == r["kid"]
            for i, r in enumerate(recipients)
        )
    )
    malformed(h["clen"] == len(body) and h["clen"] >= 16)
    if h["iat"] > now + limits["max_clock_skew"]:
        raise Reject("envelope.issued_in_future")
    malformed(h["exp"] > h["iat"])
    if h["exp"] - h["iat"] > limits["max_lifetime"]:
        raise Reject("envelope.lifetime_too_long")
    if h["exp"] <= now:
        raise Reject("envelope.expired")
    attachments = h.get("attachments", [])
    if len(attachments) > limits["max_attachments"]:
        raise Reject("attachment.too_many")
    for a in attachments:
        malformed(a["chunk"] in [2**k for k in range(10, 21)])
        if a["size"] > limits["max_attachment_bytes"]:
            raise Reject("attachment.too_large")
    if sum(a["size"] for a in attachments) > limits["max_attachments_total"]:
        raise Reject("attachment.total_too_large")
    return Verified(h, hashlib.sha256(raw).digest(), wraps, body)


def open_envelope(
    data: bytes,
    agency: str,
    own_keys: dict[bytes, Key],
    directory: KeyDirectory,
    now: int,
    limits: dict[str, int],
) -> tuple[bytes, bytes]:
    """(plaintext, content key) for `agency`, which holds the private keys `own_keys`."""
    v = verify(data, directory, now, limits)
    index = next((i for i, r in enumerate(v.header["recipients"]) if r["agency"] == agency), None)
    if index is None:
        raise Reject("envelope.not_a_recipient")
    k = v.header["recipients"][index]["kid"]
    key = own_keys.get(k)
    if (
        key is None
        or key.agency != agency
        or key.use != "enc"
        or not key.not_before <= now < key.not_after
    ):
        raise Reject("key.unknown")
    entry = v.wraps[index * WRAP_ENTRY : (index + 1) * WRAP_ENTRY]
    info = b"bridge/v1 wrap" + v.header_hash + k
    content_key = hpke_open(key.seed, key.public, entry[16:], info)
    if content_key is None or len(content_key) != 32:
        raise Reject("envelope.decryption_failed")
    if hkdf(content_key, b"bridge/v1 commitment", 32) != v.header["commit"]:
        raise Reject("envelope.key_commitment")
    okm = hkdf(content_key, b"bridge/v1 body", 44)
    try:
        plaintext = AESGCM(okm[:32]).decrypt(okm[32:], v.body, v.header_hash)
    except InvalidTag as exc:
        raise Reject("envelope.decryption_failed") from exc
    return plaintext, content_key


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> tuple[KeyDirectory, dict[bytes, Key]]:
    return load_keys()


def test_key_ids_follow_the_specification(keys: tuple[KeyDirectory, dict[bytes, Key]]) -> None:
    _, every = keys
    for k, key in every.items():
        assert kid(key.use, key.public) == k
        if key.use == "enc":
            expanded = hashlib.shake_256(key.seed).digest(96)
            ml = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]).public_key()
            xk = x25519.X25519PrivateKey.from_private_bytes(expanded[64:]).public_key()
            assert ml.public_bytes_raw() + xk.public_bytes_raw() == key.public
        else:
            ed = ed25519.Ed25519PrivateKey.from_private_bytes(key.seed[:32]).public_key()
            ml_dsa = mldsa.MLDSA65PrivateKey.from_seed_bytes(key.seed[32:]).public_key()
            assert ed.public_bytes_raw() + ml_dsa.public_bytes_raw() == key.public


@pytest.mark.parametrize("name", ["referral-ok", "feedback-reply-ok"])
def test_valid_vectors_verify_and_open(
    keys: tuple[KeyDirectory, dict[bytes, Key]], name: str
) -> None:
    directory, every = keys
    expected = json.loads((VECTORS / f"{name}.json").read_text())
    data = (VECTORS / expected["file"]).read_bytes()
    now = expected["verify_at"]
    v = verify(data, directory, now, DEFAULT_LIMITS)
    header = dict(v.header)
    header["sender_kid"] = header["sender_kid"].hex()
    header["commit"] = header["commit"].hex()
    header["recipients"] = [
        {"agency": r["agency"], "kid": r["kid"].hex()} for r in header["recipients"]
    ]
    assert header == expected["header"]
    assert v.header_hash.hex() == expected["header_sha256"]
    schedule = expected["key_schedule"]
    for agency, want in expected["recipients"].items():
        own = {k: key for k, key in every.items() if key.agency == agency}
        plaintext, content_key = open_envelope(data, agency, own, directory, now, DEFAULT_LIMITS)
        assert plaintext.hex() == want["plaintext_hex"]
        assert content_key.hex() == schedule["content_key"]
    okm = hkdf(bytes.fromhex(schedule["content_key"]), b"bridge/v1 body", 44)
    assert (okm[:32].hex(), okm[32:].hex()) == (schedule["body_key"], schedule["body_nonce"])


def test_canonical_encoder_reproduces_the_header(
    keys: tuple[KeyDirectory, dict[bytes, Key]],
) -> None:
    for name in ("referral-ok", "feedback-reply-ok"):
        expected = json.loads((VECTORS / f"{name}.json").read_text())
        raw = bytes.fromhex(expected["header_hex"])
        assert canonical(msgspec.msgpack.decode(raw)) == raw


def _entries() -> list[dict[str, Any]]:
    return list(json.loads((VECTORS / "negative.json").read_text())["vectors"])


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e["name"])
def test_negative_vectors_get_the_specified_reason(
    keys: tuple[KeyDirectory, dict[bytes, Key]], entry: dict[str, Any]
) -> None:
    directory, every = keys
    data = (VECTORS / entry["file"]).read_bytes()
    limits = DEFAULT_LIMITS | entry.get("limits", {})
    now = entry["now"]

    def own(agency: str) -> dict[bytes, Key]:
        return {k: key for k, key in every.items() if key.agency == agency}

    def run() -> object:
        if entry["check"] == "verify":
            return verify(data, directory, now, limits)
        return open_envelope(data, entry["as"], own(entry["as"]), directory, now, limits)

    with pytest.raises(Reject) as info:
        run()
    assert info.value.reason == entry["reason"]
    if entry["check"] == "open" and entry["verifies"]:
        verify(data, directory, now, limits)
    for agency in entry.get("opens_for", []):
        open_envelope(data, agency, own(agency), directory, now, limits)


# -- attachments ----------------------------------------------------------------------------------


def open_attachment_meta(content_key: bytes, index: int, meta: bytes) -> tuple[bytes, str, bytes]:
    """(chunk key, name, digest) of attachment `index`."""
    okm = hkdf(content_key, b"bridge/v1 attachment" + struct.pack(">I", index), 64)
    try:
        plain = AESGCM(okm[32:]).decrypt(bytes(12), meta, b"")
    except InvalidTag as exc:
        raise Reject("attachment.decryption_failed") from exc
    return okm[:32], plain[32:].decode(), plain[:32]


def read_attachment(
    entry: dict[str, Any], chunk_key: bytes, digest: bytes, chunks: list[bytes]
) -> bytes:
    count = max(1, -(-entry["size"] // entry["chunk"]))
    out = b""
    for j, chunk in enumerate(chunks):
        if j >= count:
            raise Reject("attachment.too_long")
        want = entry["chunk"] if j < count - 1 else entry["size"] - entry["chunk"] * (count - 1)
        if len(chunk) != want + 16:
            raise Reject("attachment.malformed")
        nonce = bytes(7) + struct.pack(">I", j) + bytes([j == count - 1])
        try:
            out += AESGCM(chunk_key).decrypt(nonce, chunk, b"")
        except InvalidTag as exc:
            raise Reject("attachment.decryption_failed") from exc
    if len(chunks) != count:
        raise Reject("attachment.truncated")
    if hashlib.sha256(out).digest() != digest:
        raise Reject("attachment.digest_mismatch")
    return out


def test_attachment_vectors_open_by_the_specification(
    keys: tuple[KeyDirectory, dict[bytes, Key]],
) -> None:
    directory, every = keys
    expected = json.loads((VECTORS / "attachments.json").read_text())
    data = (VECTORS / expected["file"]).read_bytes()
    now = expected["verify_at"]
    v = verify(data, directory, now, DEFAULT_LIMITS)
    assert len(v.header.get("attachments", [])) == 3
    for agency in ("suchtberatung-unna", "spdi-unna"):
        own = {k: key for k, key in every.items() if key.agency == agency}
        _, content_key = open_envelope(data, agency, own, directory, now, DEFAULT_LIMITS)
        assert content_key.hex() == expected["content_key"]
        for want, entry in zip(expected["attachments"], v.header["attachments"], strict=True):
            assert (entry["type"], entry["size"], entry["chunk"], entry["meta"].hex()) == (
                want["type"], want["size"], want["chunk"], want["meta_hex"],
            )  # fmt: skip
            chunk_key, name, digest = open_attachment_meta(
                content_key, want["index"], entry["meta"]
            )
            assert (chunk_key.hex(), name, digest.hex()) == (
                want["chunk_key"], want["name"], want["sha256"],
            )  # fmt: skip
            chunks = [bytes.fromhex(c["ciphertext_hex"]) for c in want["chunks"]]
            assert read_attachment(entry, chunk_key, digest, chunks).hex() == want["plaintext_hex"]
    content_key = bytes.fromhex(expected["content_key"])
    for negative in expected["negative"]:
        entry = dict(v.header["attachments"][negative["attachment"]])
        if "meta_hex" in negative:
            entry["meta"] = bytes.fromhex(negative["meta_hex"])
        chunk_key, _, digest = open_attachment_meta(
            content_key, negative["attachment"], entry["meta"]
        )
        chunks = [bytes.fromhex(c) for c in negative["chunks_hex"]]
        with pytest.raises(Reject) as caught:
            read_attachment(entry, chunk_key, digest, chunks)
        assert caught.value.reason == negative["reason"], negative["name"]


def _json_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for item in value.values() for k in _json_keys(item)}
    if isinstance(value, list):
        return {k for item in value for k in _json_keys(item)}
    return set()


def test_every_vector_field_name_is_documented() -> None:
    """An implementer reads the vector files' field names (`seed_hex`, `public_base64`, the
    negative entries' fields, ...) from docs/envelope.md, "Test vectors"; none may be missing."""
    doc = (Path(__file__).parents[1] / "docs" / "envelope.md").read_text()
    section = doc[doc.index("## Test vectors") :]
    named = set(re.findall(r"[`{,(]\s*([a-z][a-z0-9_]*)", section))
    headers = {"header", "frame", "key_schedule", "recipients"}  # their content: the header table
    for path in sorted(VECTORS.glob("*.json")):
        data = json.loads(path.read_text())
        keys = _json_keys({k: v for k, v in data.items() if k not in headers}) | set(data)
        # Agency ids are keys of `recipients` maps, not field names.
        missing = sorted(k for k in keys - named if not k.endswith("-unna"))
        assert missing == [], (path.name, missing)


def xwing_encaps(public: bytes) -> tuple[bytes, bytes]:
    """X-Wing encapsulation as docs/envelope.md gives it: (shared secret, enc)."""
    pk_m, pk_x = public[:1184], public[1184:]
    eseed = os.urandom(64)
    # ML-KEM-768.Encaps with a fresh m: cryptography draws m itself (eseed[0:32] stays unused).
    ss_m, ct_m = mlkem.MLKEM768PublicKey.from_public_bytes(pk_m).encapsulate()
    ek_x = x25519.X25519PrivateKey.from_private_bytes(eseed[32:64])
    ct_x = ek_x.public_key().public_bytes_raw()
    ss_x = ek_x.exchange(x25519.X25519PublicKey.from_public_bytes(pk_x))
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + b"\\.//^\\").digest(), ct_m + ct_x


def test_a_wrap_sealed_by_the_documented_encapsulation_opens_with_x_wing_hpke(
    keys: tuple[KeyDirectory, dict[bytes, Key]],
) -> None:
    """The other direction of interoperation: a wrap built from the documented X-Wing
    encapsulation and HPKE key schedule opens with cryptography's X-Wing HPKE (what bridge
    uses, MLKEM768X25519) and with the documented decapsulation."""
    _, every = keys
    key = next(k for k in every.values() if k.use == "enc")
    shared, enc = xwing_encaps(key.public)
    info = b"bridge/v1 wrap" + bytes(32) + bytes(16)
    context = (
        b"\x00"
        + labeled_extract(b"", b"psk_id_hash", b"")
        + labeled_extract(b"", b"info_hash", info)
    )
    secret = labeled_extract(shared, b"secret", b"")
    content_key = bytes(range(32))
    sealed = AESGCM(labeled_expand(secret, b"key", context, 32)).encrypt(
        labeled_expand(secret, b"base_nonce", context, 12), content_key, b""
    )
    wrapped = enc + sealed
    assert len(wrapped) == ENC_LEN + 48
    expanded = hashlib.shake_256(key.seed).digest(96)
    private = hpke.MLKEM768X25519PrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        x25519.X25519PrivateKey.from_private_bytes(expanded[64:]),
    )
    suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    assert suite.decrypt(wrapped, private, info=info) == content_key
    assert hpke_open(key.seed, key.public, wrapped, info) == content_key
    with pytest.raises(InvalidTag):  # the positive result is not a matter of course
        suite.decrypt(wrapped, private, info=info[:-1] + b"\x01")
