"""Checking a submission: everything `POST /v1/messages` refuses, before anything is sealed.

Each refusal is an `ApiProblem` naming the field by JSON path, never quoting a value. The body is
validated by `bridge.wire.decode_body` on the exact bytes the caller sent; the request around it
by the same strict decoder the wire documents use, so unknown fields and repeated keys are
refused and msgspec's messages (which may quote values) are reduced to safe ones.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final, TypeVar

import msgspec

from ..crypto import Limits
from ..errors import KeyInvalid
from ..federation.directory import Directory
from ..http.problems import ApiProblem
from ..wire import (
    ALLOWED_CATEGORIES,
    Body,
    BodyInvalid,
    MessageType,
    WireInvalid,
    decode_body,
    decode_strict,
)
from ..wire import encode_body as encode_wire_body
from .api import MAX_LIFETIME_SECONDS, RawSubmitRequest

__all__ = ["Submission", "decode_request", "parse_submission"]

_MISSING_FIELD_RE: Final = re.compile(r"Object missing required field `([a-z_][a-z0-9_]*)`$")
_request_decoder: Final = msgspec.json.Decoder(RawSubmitRequest)


class _RequestInvalid(WireInvalid):
    reason = "request.invalid"


@dataclass(frozen=True)
class Submission:
    """A checked submission: the request's metadata, its body, and what it seals."""

    request: RawSubmitRequest
    body: Body
    plaintext: bytes
    lifetime: int

    def digest(self) -> str:
        """Identifies the request for idempotency, independent of JSON formatting."""
        r = self.request
        meta = msgspec.json.encode(
            [r.type, r.recipients, r.consent, r.purpose, r.categories, r.reply_to, self.lifetime]
        )
        return hashlib.sha256(meta + b"\x00" + self.plaintext).hexdigest()


_R = TypeVar("_R")


def decode_request(decoder: msgspec.json.Decoder[_R], raw: bytes, max_bytes: int) -> _R:
    """Strictly decode an API request; `ApiProblem` 400 (malformed) or 422 naming the field."""
    try:
        return decode_strict(
            decoder, raw, limit=max_bytes, error=_RequestInvalid, what="request", prefix="request"
        )
    except _RequestInvalid as exc:
        field = exc.path
        if (m := _MISSING_FIELD_RE.search(str(exc))) is not None:
            field = ("$" if field in (None, "$") else field) + "." + m[1]
        status = 400 if exc.reason == "request.malformed" else 422
        raise ApiProblem(status, str(exc), reason=exc.reason, field=field) from None


def _invalid(detail: str, reason: str, field: str | None) -> ApiProblem:
    return ApiProblem(422, detail, reason=reason, field=field)


def parse_submission(
    raw: bytes,
    *,
    agency: str,
    directory: Directory,
    limits: Limits,
    default_lifetime: int,
    max_bytes: int,
    now: int,
) -> Submission:
    """Decode and check a submission; raise `ApiProblem` naming the field, never a value."""
    try:
        request = decode_request(_request_decoder, raw, max_bytes)
    except ApiProblem as problem:
        if problem.field == "$.lifetime_seconds" and "<=" in problem.detail:
            # Over the schema's maximum: the same answer as over the configured one below.
            raise _invalid(
                f"lifetime exceeds {MAX_LIFETIME_SECONDS} seconds",
                "request.lifetime_too_long",
                problem.field,
            ) from None
        raise
    try:
        body = decode_body(request.type, bytes(request.body))
    except BodyInvalid as exc:
        path = exc.path or "$"
        field = "$.body" + path[1:]
        detail = str(exc).replace(f"at {path}", f"at {field}", 1)
        raise _invalid(detail, exc.reason, field) from None
    allowed = ALLOWED_CATEGORIES[MessageType(request.type)]
    for i, category in enumerate(request.categories):
        if category not in allowed:
            raise _invalid(
                f"data category not allowed for a {request.type}",
                "request.category_not_allowed",
                f"$.categories[{i}]",
            )
        if category in request.categories[:i]:
            raise _invalid("data category repeated", "request.duplicate", f"$.categories[{i}]")
    for i, recipient in enumerate(request.recipients):
        field = f"$.recipients[{i}]"
        if recipient in request.recipients[:i]:
            raise _invalid("recipient repeated", "request.duplicate", field)
        if recipient == agency:
            raise _invalid("an agency cannot send to itself", "recipient.self", field)
        if not directory.has_agency(recipient):
            raise _invalid("recipient is not in the key directory", "recipient.unknown", field)
        try:
            directory.current_key(recipient, "enc", now)
        except KeyInvalid:
            raise _invalid(
                "recipient has no valid encryption key", "recipient.no_key", field
            ) from None
    lifetime = request.lifetime_seconds or default_lifetime
    if lifetime > limits.max_lifetime:
        raise _invalid(
            f"lifetime exceeds {limits.max_lifetime} seconds",
            "request.lifetime_too_long",
            "$.lifetime_seconds",
        )
    return Submission(request, body, encode_wire_body(body), lifetime)
