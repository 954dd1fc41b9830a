"""Outbound: validate a local system's submission, seal it, and hand it to NATS durably.

Nothing is published unless every check passed, and the caller hears `202` only after JetStream
acknowledged the envelope. With an `Idempotency-Key` the message id is fixed before anything is
published (an atomic create in the KV bucket), so a retry after a lost answer seals again under
the same id and JetStream's duplicate window drops the second copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec
from nats.js.client import JetStreamContext

from ..crypto import Keyring, Limits, seal
from ..directory import Directory
from ..errors import BridgeError, KeyInvalid, TransportError
from ..ids import new_message_id
from ..subjects import submit_subject
from ..transport import publish_durable
from ..wire import ALLOWED_CATEGORIES, Body, BodyInvalid, MessageType, WireInvalid, decode_body
from ..wire import encode_body as encode_wire_body
from ..wire._codec import decode_strict
from .api import RawSubmitRequest
from .problems import ApiProblem
from .store import Event, IdemRecord, MessageRecord, Store

__all__ = ["Outbound", "Submission", "parse_submission"]

log = logging.getLogger(__name__)

_MAX_IDEMPOTENCY_KEY: Final = 200
_IDEMPOTENCY_KEY_RE: Final = re.compile(r"^[!-~]+$")
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
        request = decode_strict(
            _request_decoder,
            raw,
            limit=max_bytes,
            error=_RequestInvalid,
            what="request",
            prefix="request",
        )
    except _RequestInvalid as exc:
        field = exc.path
        if (m := _MISSING_FIELD_RE.search(str(exc))) is not None:
            field = ("$" if field in (None, "$") else field) + "." + m[1]
        status = 400 if exc.reason == "request.malformed" else 422
        raise ApiProblem(status, str(exc), reason=exc.reason, field=field) from None
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


def _check_idempotency_key(key: str) -> str:
    if len(key) > _MAX_IDEMPOTENCY_KEY or not _IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise ApiProblem(
            400,
            f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} printable ASCII characters",
            reason="idempotency.key_invalid",
        )
    return key


class Outbound:
    """Seals and publishes submissions for one agency."""

    def __init__(
        self,
        *,
        agency: str,
        keyring: Keyring,
        directory: Callable[[], Directory],
        store: Store,
        js: JetStreamContext,
        limits: Limits,
        default_lifetime: int,
        idempotency_ttl: int,
        max_bytes: int,
        publish_timeout: float,
        clock: Callable[[], float],
        retry_after: int = 5,
    ) -> None:
        self._agency = agency
        self._keyring = keyring
        self._directory = directory
        self._store = store
        self._js = js
        self._limits = limits
        self._default_lifetime = default_lifetime
        self._idempotency_ttl = idempotency_ttl
        self._max_bytes = max_bytes
        self._publish_timeout = publish_timeout
        self._clock = clock
        self._retry_after = retry_after

    async def submit(self, raw: bytes, *, subject: str, idempotency_key: str | None) -> str:
        """Check, seal and publish; return the message id once JetStream has stored it."""
        now = int(self._clock())
        directory = self._directory()
        submission = parse_submission(
            raw,
            agency=self._agency,
            directory=directory,
            limits=self._limits,
            default_lifetime=self._default_lifetime,
            max_bytes=self._max_bytes,
            now=now,
        )
        try:
            return await self._submit(submission, directory, subject, idempotency_key, now)
        except TransportError as exc:
            log.warning("submission not accepted: NATS unavailable [%s]", exc.reason)
            raise ApiProblem(
                503,
                "the message could not be stored right now; retry later",
                reason=exc.reason,
                headers={"Retry-After": str(self._retry_after)},
            ) from exc

    async def _submit(
        self,
        submission: Submission,
        directory: Directory,
        subject: str,
        idempotency_key: str | None,
        now: int,
    ) -> str:
        message_id = new_message_id()
        if idempotency_key is not None:
            key = _check_idempotency_key(idempotency_key)
            key_hash = hashlib.sha256(f"{subject}\x00{key}".encode()).hexdigest()
            digest = submission.digest()
            claimed = await self._store.claim_idempotency(
                key_hash, IdemRecord(message_id=message_id, digest=digest), self._idempotency_ttl
            )
            if claimed.digest != digest:
                raise ApiProblem(
                    422,
                    "this Idempotency-Key was used with a different request",
                    reason="idempotency.mismatch",
                )
            message_id = claimed.message_id
        request = submission.request
        try:
            envelope = await asyncio.to_thread(
                seal,
                submission.plaintext,
                message_type=request.type,
                sender=self._keyring,
                recipients=list(request.recipients),
                directory=directory,
                consent=request.consent,
                purpose=request.purpose.value,
                categories=[c.value for c in request.categories],
                lifetime=submission.lifetime,
                reply_to=request.reply_to,
                message_id=message_id,
                now=now,
                limits=self._limits,
            )
        except BridgeError as exc:
            log.error("cannot seal a submission [%s]", exc.reason)
            raise ApiProblem(500, "the message could not be sealed", reason=exc.reason) from exc
        await self._store.create_message(
            MessageRecord(
                message_id=message_id,
                type=request.type,
                recipients=list(request.recipients),
                created_at=now,
                expires_at=now + submission.lifetime,
            ),
            now,
        )
        ack = await publish_durable(
            self._js,
            submit_subject(self._agency),
            envelope,
            msg_id=message_id,
            timeout=self._publish_timeout,
        )
        await self._store.add_events(
            message_id, [Event(state="accepted", at=int(self._clock()))], int(self._clock())
        )
        log.info(
            "submitted message %s (%s, %d recipients%s)",
            message_id,
            request.type,
            len(request.recipients),
            ", duplicate" if ack.duplicate else "",
        )
        return message_id
