"""Strict JSON decoding and encoding of message bodies, with errors that never echo content.

Decoding errors end up in logs, audit records and status events, and the bodies they describe are
full of personal data. msgspec's messages sometimes quote the offending value or an unknown key,
so they are never passed on: each is reduced to a fixed description and the field path, both
taken from a short allowlist. Everything else becomes "invalid value".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Final, NoReturn, TypeVar

import msgspec

from ..errors import ProtocolError
from ._bodies import BODY_TYPES, Body, message_type_of
from ._vocab import MessageType

__all__ = [
    "MAX_BODY_BYTES",
    "BodyInvalid",
    "WireInvalid",
    "decode_body",
    "decode_strict",
    "encode_body",
]

# Room for the largest valid body however it is encoded: every string at its limit in
# characters a JSON library may write as a \u-escaped surrogate pair (12 bytes each) comes to
# about 360 KiB; `encode_body` writes the same body in about 125 KiB. Below the envelope limit.
MAX_BODY_BYTES: Final = 512 * 1024


class WireInvalid(ProtocolError):
    """A wire document failed to decode or validate.

    `path` is the JSON path of the offending field (`$.client.family_name`) when known. Neither the
    message nor `path` contains any value from the document.
    """

    reason = "wire.invalid"

    def __init__(self, message: str, *, reason: str | None = None, path: str | None = None):
        super().__init__(message, reason=reason)
        self.path = path


class BodyInvalid(WireInvalid):
    """A message body is not what its type requires.

    Reasons: `body.malformed` (not JSON or not UTF-8), `body.invalid` (a field is missing, unknown,
    of the wrong type or out of bounds), `body.type_mismatch` (the body's `type` is not the
    message type), `body.unknown_type` (no such message type), `body.too_large`.
    """

    reason = "body.invalid"


_PATH = re.compile(r"^\$(?:\.[a-z_][a-z0-9_]*|\[[0-9]+\])*$")
_AT = re.compile(r"^(?P<problem>.*) - at `(?P<path>[^`]*)`$", re.DOTALL)
# (msgspec's wording, or a pattern of it) -> what we say instead; None keeps the wording, which
# the pattern guarantees to hold only type names, numbers and our own field names.
_PROBLEMS: Final[tuple[tuple[re.Pattern[str], str | None], ...]] = (
    (re.compile(r"^Expected `[a-z |]+`, got `[a-z]+`$"), None),
    (re.compile(r"^Expected `[a-z]+` of length [<>]= [0-9]+$"), None),
    (re.compile(r"^Expected `[a-z]+` [<>]=? -?[0-9.]+$"), None),
    (re.compile(r"^Expected `str` matching regex "), "Expected `str` matching the field's pattern"),
    (re.compile(r"^Expected `datetime` with a timezone component$"), None),
    (re.compile(r"^Invalid RFC3339 encoded (?:date|datetime)$"), None),
    (re.compile(r"^Number out of range$"), None),
    (re.compile(r"^Object missing required field `[a-z_][a-z0-9_]*`$"), None),
    (re.compile(r"^Object contains unknown field "), "Object contains an unknown field"),
    (re.compile(r"^Invalid enum value "), "Invalid code"),
    (re.compile(r"^Invalid value "), "Invalid value"),
    (re.compile(r"^JSON is malformed: [a-z ]+ \(byte [0-9]+\)$"), None),
    (re.compile(r"^Input data was truncated$"), None),
    (re.compile(r"^maximum recursion depth exceeded"), "Nested too deeply"),
)


def _describe(exc: Exception) -> tuple[str, str | None]:
    """A safe message and the field path for a msgspec error."""
    # msgspec leaves out the path when the problem is at the top level.
    text, path = str(exc), "$" if isinstance(exc, msgspec.ValidationError) else None
    if (m := _AT.match(text)) is not None:
        text = m["problem"]
        path = m["path"] if _PATH.match(m["path"]) else None
    for pattern, replacement in _PROBLEMS:
        if pattern.match(text):
            return (text if replacement is None else replacement), path
    return "Invalid value", path


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> None:
    if len({key for key, _ in pairs}) != len(pairs):
        raise _DuplicateKey


_T = TypeVar("_T")


def decode_strict(
    decoder: msgspec.json.Decoder[_T],
    data: bytes,
    *,
    limit: int,
    error: Callable[..., WireInvalid],
    what: str,
    prefix: str,
) -> _T:
    """Decode `data` with `decoder`; turn every failure into `error(...)` with a safe message.

    For any strict JSON document, not only bodies: `error` is a `WireInvalid` subclass, `what`
    names the document in messages, and the reason is `<prefix>.too_large`, `<prefix>.malformed`
    or `<prefix>.invalid`. Beyond msgspec's checks, an object with a repeated key is refused:
    parsers disagree on which value wins, and a local system must not read a different value than
    the one validated here.
    """
    if len(data) > limit:
        raise error(f"{what} exceeds {limit} bytes", reason=f"{prefix}.too_large")
    try:
        value = decoder.decode(data)
    except msgspec.ValidationError as exc:
        _fail(error, what, f"{prefix}.invalid", exc)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        # msgspec reports invalid UTF-8 inside a string as UnicodeDecodeError, and nesting deeper
        # than it can follow (possible under `msgspec.Raw` or `Any`) as RecursionError.
        _fail(error, what, f"{prefix}.malformed", exc)
    try:
        json.loads(data, object_pairs_hook=_no_duplicates)
    except _DuplicateKey:
        raise error(
            f"{what} invalid: an object repeats a key", reason=f"{prefix}.invalid"
        ) from None
    except (ValueError, RecursionError):
        raise error(f"{what} malformed", reason=f"{prefix}.malformed") from None
    return value


def _fail(error: Callable[..., WireInvalid], what: str, reason: str, exc: Exception) -> NoReturn:
    problem, path = _describe(exc)
    where = f" at {path}" if path else ""
    # The cause is dropped on purpose: its message may quote personal data.
    raise error(f"{what} invalid{where}: {problem}", reason=reason, path=path) from None


_decoder: Final = msgspec.json.Decoder(Body)
_encoder: Final = msgspec.json.Encoder()


def decode_body(message_type: MessageType | str, data: bytes) -> Body:
    """Decode and validate the JSON body of a message of `message_type`.

    Raises `BodyInvalid` naming the field path, never a value. The body's own `type` must equal
    `message_type`, the type the signed envelope header declares.
    """
    try:
        expected = BODY_TYPES[MessageType(message_type)]
    except ValueError:
        raise BodyInvalid("unknown message type", reason="body.unknown_type") from None
    try:
        body = decode_strict(
            _decoder, data, limit=MAX_BODY_BYTES, error=BodyInvalid, what="body", prefix="body"
        )
    except BodyInvalid as exc:
        # A body of another type fails for reasons of that type; name the real problem.
        if exc.reason == "body.invalid" and (tag := _tag_of(data)) in _TAGS and tag != message_type:
            raise _type_mismatch() from None
        raise
    if type(body) is not expected:
        raise _type_mismatch()
    return body


class _Tag(msgspec.Struct):
    type: str


_tag_decoder: Final = msgspec.json.Decoder(_Tag)
_TAGS: Final = frozenset(MessageType)


def _tag_of(data: bytes) -> str | None:
    try:
        return _tag_decoder.decode(data).type
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
        return None


def _type_mismatch() -> BodyInvalid:
    return BodyInvalid(
        "body invalid at $.type: not the message type",
        reason="body.type_mismatch",
        path="$.type",
    )


def encode_body(body: Body) -> bytes:
    """Encode `body` as compact JSON, and check the result decodes as its type.

    Structs built in Python are not validated by msgspec, so without the check an over-long name
    or a naive datetime would leave this system and be rejected by the recipient instead.
    """
    try:
        data = _encoder.encode(body)
    except (TypeError, UnicodeEncodeError):
        raise BodyInvalid("body cannot be encoded", reason="body.invalid") from None
    decode_body(message_type_of(body), data)
    return data
