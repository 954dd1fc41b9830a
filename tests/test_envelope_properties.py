"""Properties of verify and open under arbitrary input (hypothesis).

Whatever bytes arrive, verify and open either succeed or raise one of the documented rejections
(docs/envelope.md, "Rejections") with its documented reason code: never a stray `ValueError`,
`IndexError` or library exception, which a broker would turn into a crash or a retry loop. And no
changed envelope ever opens: the only bytes that open are the original ones.

Mutations of a signed envelope mostly stop at the signature check, so two properties re-sign
their mutations with the sender's real key: that drives arbitrary headers into the msgpack
decoder and the header rules, and arbitrary wraps and bodies into HPKE and AES-GCM.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable
from typing import Any

import msgspec
from envelope_helpers import (
    RECIPIENTS,
    SENDER,
    T0,
    WRAP_ENTRY_LEN,
    Federation,
    build,
    federation,
    resign,
    split,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.crypto import open_envelope, verify
from bridge.errors import (
    BridgeError,
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

VERIFY_ERRORS: frozenset[type[BridgeError]] = frozenset(
    {
        TooLarge,
        MalformedEnvelope,
        UnsupportedVersion,
        UnsupportedSuite,
        UnknownKey,
        KeyMisuse,
        KeyRevoked,
        KeyExpired,
        SignatureInvalid,
        RecipientError,
        NotYetValid,
        LifetimeTooLong,
        EnvelopeExpired,
    }
)
OPEN_ERRORS = VERIFY_ERRORS | {NotARecipient, DecryptionFailed, KeyCommitmentMismatch}
_SIGS = 64 + 3309
RECIPIENT_REASONS = {
    "envelope.no_recipients",
    "envelope.too_many_recipients",
    "envelope.duplicate_recipient",
    "envelope.unknown_recipient",
}

# Each property runs ~200 examples, each a verify and an open (and sometimes a signature): a
# few seconds in all, so the whole suite stays well inside its budget on two cores.
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@functools.cache
def _setup() -> tuple[Federation, bytes, bytes]:
    """The federation, a valid envelope, and another valid envelope to splice with."""
    fed = federation(T0)
    other = build(fed, b"another body", message_id="5b0c2d6e-9f3a-4e1b-8c7d-2a4f6e8b0c1d")
    return fed, build(fed), other


def _documented(exc: BridgeError, allowed: frozenset[type[BridgeError]]) -> None:
    assert type(exc) in allowed, repr(exc)
    if type(exc) is RecipientError:
        assert exc.reason in RECIPIENT_REASONS, repr(exc)
    else:
        assert exc.reason == type(exc).reason, repr(exc)


def _verify_and_open(data: bytes, may_open: Callable[[bytes, int], bool]) -> None:
    """Run verify, then open as every recipient and the sender.

    `may_open(data, i)` says whether recipient `i` may still open the changed envelope.
    """
    fed = _setup()[0]
    try:
        verify(data, fed.directory, now=fed.now)
    except BridgeError as exc:
        _documented(exc, VERIFY_ERRORS)
    for agency in (*RECIPIENTS, SENDER):
        try:
            opened = open_envelope(data, fed.keyring(agency), fed.directory, now=fed.now)
        except BridgeError as exc:
            _documented(exc, OPEN_ERRORS)
        else:
            assert agency in RECIPIENTS
            assert may_open(data, RECIPIENTS.index(agency)), f"{agency} opened a changed envelope"
            assert opened.envelope.raw == data


def _never(data: bytes, index: int) -> bool:
    return False


def _one_of_the_originals(data: bytes, index: int) -> bool:
    # A splice can rebuild the other envelope exactly (both start with the same 26 bytes).
    _, ok, other = _setup()
    return data in (ok, other)


def _own_parts_unchanged(data: bytes, index: int) -> bool:
    """Re-signed by the sender: a recipient may open it when the header, the body and its own
    wrap are the original ones. Wraps are independent, so a sender that spoils one
    recipient's wrap still reaches the others; that is the sender's choice, not a forgery."""
    original, changed = split(_setup()[1]), split(data)
    own = slice(index * WRAP_ENTRY_LEN, (index + 1) * WRAP_ENTRY_LEN)
    return (
        changed.header == original.header
        and changed.body == original.body
        and changed.wraps[own] == original.wraps[own]
    )


# -- arbitrary bytes ----------------------------------------------------------------------------


@PROPERTY
@given(st.binary(max_size=8192))
def test_random_bytes(data: bytes) -> None:
    _verify_and_open(data, _never)


_LABELS = [f"{SENDER}/sign", f"{SENDER}/sign-revoked", f"{SENDER}/enc", "klinik-dortmund/sign"]


@st.composite
def _framed(draw: st.DrawFn) -> bytes:
    """Random sections in a frame whose lengths are mostly right, with random signatures."""
    fed = _setup()[0]
    head = b"BRDG" + bytes(
        [draw(st.sampled_from([1, 1, 1, 2])), draw(st.sampled_from([1, 1, 1, 0]))]
    )
    data = head + fed.key(draw(st.sampled_from(_LABELS))).kid
    for _ in range(3):
        section = draw(st.binary(max_size=300))
        length = len(section) + draw(st.sampled_from([0, 0, 0, 0, 1, -1, 2**31]))
        data += struct.pack(">I", max(length, 0) % 2**32) + section
    # Signature-sized tails are costly for hypothesis to draw byte by byte; expand a seed.
    tail = hashlib.shake_256(draw(st.binary(min_size=8, max_size=8))).digest(_SIGS)
    return data + tail[: _SIGS + draw(st.sampled_from([0, 0, 0, -1, 1, -64]))]


@PROPERTY
@given(_framed())
def test_random_sections_in_a_plausible_frame(data: bytes) -> None:
    """The length walk, the key lookup and the signature check see arbitrary input."""
    _verify_and_open(data, _never)


# -- mutations of a valid envelope --------------------------------------------------------------


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    _, ok, other = _setup()
    data = ok
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(
                ["flip", "insert", "delete", "truncate", "extend", "overwrite", "splice"]
            )
        )
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            bit = draw(st.integers(0, 7))
            data = data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1 :]
        elif kind == "insert":
            data = data[:pos] + draw(st.binary(min_size=1, max_size=64)) + data[pos:]
        elif kind == "delete":
            data = data[:pos] + data[pos + draw(st.integers(1, 64)) :]
        elif kind == "truncate":
            data = data[:pos]
        elif kind == "extend":
            data = data + draw(st.binary(min_size=1, max_size=64))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=32))
            data = data[:pos] + chunk + data[pos + len(chunk) :]
        elif kind == "splice":
            cut = draw(st.integers(0, len(other)))
            data = data[:pos] + other[cut:] if draw(st.booleans()) else other[:cut] + data[pos:]
    return data


@PROPERTY
@given(_mutated())
def test_mutations_never_open_and_fail_only_as_documented(data: bytes) -> None:
    _verify_and_open(data, _one_of_the_originals)


# -- mutations signed by the sender's real key --------------------------------------------------


def _mutate_section(draw: st.DrawFn, section: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "insert", "delete", "overwrite", "replace"]))
    if kind == "replace":
        return draw(st.binary(max_size=512))
    pos = draw(st.integers(0, max(len(section) - 1, 0)))
    if kind == "flip" and section:
        return (
            section[:pos]
            + bytes([section[pos] ^ (1 << draw(st.integers(0, 7)))])
            + section[pos + 1 :]
        )
    if kind == "insert":
        return section[:pos] + draw(st.binary(min_size=1, max_size=16)) + section[pos:]
    if kind == "delete":
        return section[:pos] + section[pos + draw(st.integers(1, 16)) :]
    chunk = draw(st.binary(min_size=1, max_size=16))
    return section[:pos] + chunk + section[pos + len(chunk) :]


@st.composite
def _resigned(draw: st.DrawFn) -> bytes:
    fed, ok, _ = _setup()
    parts = split(ok)
    which = draw(st.sampled_from(["header", "wraps", "body"]))
    changed = parts.replace(**{which: _mutate_section(draw, getattr(parts, which))})
    return resign(changed, fed.key(f"{SENDER}/sign"))


@PROPERTY
@given(_resigned())
def test_resigned_section_mutations(data: bytes) -> None:
    """A sender with a real key changes a section: nobody opens anything but the original."""
    _verify_and_open(data, _own_parts_unchanged)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

_FIELDS = ("v", "suite", "id", "type", "sender", "sender_kid", "recipients", "consent",
           "purpose", "categories", "iat", "exp", "clen", "commit", "reply_to")  # fmt: skip


@st.composite
def _resigned_header(draw: st.DrawFn) -> bytes:
    """The valid header with fields replaced by arbitrary msgpack values, or removed, or added."""
    fed, ok, _ = _setup()
    parts = split(ok)
    fields: dict[str, Any] = msgspec.msgpack.decode(parts.header)
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from([*_FIELDS, "extra"]))
        if draw(st.integers(0, 4)) == 0:
            fields.pop(name, None)
        else:
            fields[name] = draw(_msgpack_values)
    header = msgspec.msgpack.encode(fields)
    return resign(parts.replace(header=header), fed.key(f"{SENDER}/sign"))


@PROPERTY
@given(_resigned_header())
def test_resigned_arbitrary_header_values(data: bytes) -> None:
    _verify_and_open(data, _own_parts_unchanged)
