"""The structs of the adapter's HTTP API: what local systems send and what they get back.

One definition serves three purposes: strict decoding of requests (unknown fields refused), the
encoding of answers and webhook calls, and the OpenAPI document (`bridge.adapters.openapi`), so
the documentation cannot drift from what the code accepts.

`SubmitRequest` documents a submission with its body as the typed union of message bodies;
`RawSubmitRequest` is what the adapter actually decodes, with the body kept as raw JSON so that
`bridge.wire.decode_body` validates exactly the bytes the caller sent (duplicate keys included).
"""

from __future__ import annotations

import datetime
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from ..http.problems import Problem
from ..ids import AGENCY_ID_PATTERN, CONSENT_REF_PATTERN
from ..wire import (
    MESSAGE_ID_PATTERN,
    REASON_CODE_PATTERN,
    Body,
    DataCategory,
    DeliveryState,
    PolicyHash,
    Purpose,
)

__all__ = [
    "MAX_LIFETIME_SECONDS",
    "MIN_LIFETIME_SECONDS",
    "Accepted",
    "AttachmentInfo",
    "ConsentEvent",
    "ConsentList",
    "ConsentRequest",
    "ConsentView",
    "DeletionConfirmation",
    "Health",
    "InboundType",
    "InboxItem",
    "InboxList",
    "InboxSummary",
    "MessageStatus",
    "OutboundType",
    "Problem",
    "RawSubmitRequest",
    "RecipientStatus",
    "SubmitRequest",
    "TimelineEvent",
    "UploadRef",
    "UploadRequest",
    "UploadStatus",
]

MIN_LIFETIME_SECONDS: Final = 60
MAX_LIFETIME_SECONDS: Final = 30 * 86400

AgencyId = Annotated[str, Meta(min_length=1, max_length=63, pattern=AGENCY_ID_PATTERN)]
MessageId = Annotated[str, Meta(min_length=36, max_length=36, pattern=MESSAGE_ID_PATTERN)]
ConsentRef = Annotated[str, Meta(min_length=34, max_length=36, pattern=CONSENT_REF_PATTERN)]
ReasonCode = Annotated[str, Meta(min_length=1, max_length=64, pattern=REASON_CODE_PATTERN)]
Code = Annotated[str, Meta(min_length=1, max_length=48)]
UtcDateTime = Annotated[datetime.datetime, Meta(tz=True)]

OutboundType = Literal["referral", "handover", "feedback"]
"""What a local system may send; receipts are the adapter's own business."""

InboundType = Literal["referral", "handover", "feedback", "consent-revoked"]
"""What a local system receives: messages, and notices that a consent was withdrawn."""


class _Api(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


UploadId = Annotated[str, Meta(min_length=32, max_length=32, pattern=r"^[0-9a-f]{32}$")]


class UploadRef(_Api, frozen=True, kw_only=True):
    """A complete upload (`POST /v1/uploads`) sent as one attachment of the message."""

    upload: UploadId


class UploadRequest(_Api, frozen=True, kw_only=True):
    """`POST /v1/uploads`: declare a file to upload in parts; `digest` is its SHA-256."""

    name: Annotated[str, Meta(min_length=1, max_length=255)]
    media_type: Annotated[str, Meta(min_length=1, max_length=127)]
    size: Annotated[int, Meta(ge=0, le=2**40)]
    digest: Annotated[bytes, Meta(min_length=32, max_length=32)] | None = None


class UploadStatus(_Api, frozen=True, kw_only=True):
    """An upload's progress: resume with `PUT /v1/uploads/{id}?offset=<received>`."""

    id: UploadId
    received: int
    size: int
    complete: bool


class _SubmitFields(_Api, frozen=True, kw_only=True):
    type: OutboundType
    recipients: Annotated[list[AgencyId], Meta(min_length=1, max_length=16)]
    consent: ConsentRef
    purpose: Purpose
    categories: Annotated[list[DataCategory], Meta(min_length=1, max_length=16)]
    reply_to: MessageId | None = None
    lifetime_seconds: (
        Annotated[int, Meta(ge=MIN_LIFETIME_SECONDS, le=MAX_LIFETIME_SECONDS)] | None
    ) = None
    # Complete uploads to send as attachments (JSON submissions only; docs/adapter.md).
    attachments: Annotated[list[UploadRef], Meta(min_length=1, max_length=16)] | None = None


class SubmitRequest(_SubmitFields, frozen=True, kw_only=True):
    """`POST /v1/messages`: a message to seal and send.

    `body` must be a body of `type` (its own `type` tag equal to it); `categories` must be
    allowed for that type; every recipient must be in the key directory.
    """

    body: Body


class RawSubmitRequest(_SubmitFields, frozen=True, kw_only=True):
    """`SubmitRequest` as decoded: the body stays raw JSON for `bridge.wire.decode_body`."""

    body: msgspec.Raw


LocalRef = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=200,
        pattern=r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$(?!\n)",
    ),
]
"""The agency's own reference for the client (a case file number): kept in the adapter."""

ConsentState = Literal["active", "not-yet-valid", "expired", "withdrawn"]


class ConsentRequest(_Api, frozen=True, kw_only=True):
    """`POST /v1/consents`: register a consent this agency obtained from a client.

    `local_ref` stays in this adapter's own store and never leaves it: the signed record names
    no client. `valid_from` defaults to now.
    """

    recipients: Annotated[list[AgencyId], Meta(min_length=1, max_length=16)]
    purposes: Annotated[list[Purpose], Meta(min_length=1, max_length=5)]
    categories: Annotated[list[DataCategory], Meta(min_length=1, max_length=16)]
    types: Annotated[list[OutboundType], Meta(min_length=1, max_length=3)]
    valid_from: UtcDateTime | None = None
    valid_until: UtcDateTime
    local_ref: LocalRef


class ConsentEvent(_Api, frozen=True, kw_only=True, omit_defaults=True):
    """What happened since a withdrawal: `notified` (a recipient was sent the signed notice),
    `deletion-confirmed` (the recipient's system confirmed that it deleted the data)."""

    state: Literal["withdrawn", "notified", "deletion-confirmed"]
    at: UtcDateTime
    recipient: AgencyId | None = None


class ConsentView(_Api, frozen=True, kw_only=True, omit_defaults=True):
    """`GET /v1/consents/{id}`: the signed record, its state and what followed a withdrawal.

    `local_ref` is shown only to the agency that registered the consent.
    """

    consent_id: ConsentRef
    issuer: AgencyId
    recipients: list[AgencyId]
    purposes: list[Code]
    categories: list[Code]
    types: list[Code]
    valid_from: UtcDateTime
    valid_until: UtcDateTime
    issued_at: UtcDateTime
    state: ConsentState
    withdrawn_at: UtcDateTime | None = None
    local_ref: LocalRef | None = None
    events: list[ConsentEvent] = msgspec.field(default_factory=list)


class ConsentList(_Api, frozen=True, kw_only=True):
    """`GET /v1/consents?local_ref=...`: this agency's consents for one client."""

    items: list[ConsentView]


class DeletionConfirmation(_Api, frozen=True, kw_only=True):
    """`POST /v1/inbox/{id}/deleted` answer: the confirmation was sent to the issuing agency."""

    message_id: MessageId


class Accepted(_Api, frozen=True, kw_only=True):
    """`202` to a submission: the message is stored in NATS and will be routed."""

    message_id: MessageId


class TimelineEvent(_Api, frozen=True, kw_only=True, omit_defaults=True):
    """One step of a message: for one recipient, or for all when `recipient` is absent."""

    state: DeliveryState
    at: UtcDateTime
    recipient: AgencyId | None = None
    reason: ReasonCode | None = None
    # The routing policy version (hash) under which the broker routed or rejected it.
    policy: PolicyHash | None = None


class RecipientStatus(_Api, frozen=True, kw_only=True, omit_defaults=True):
    """Where a message stands for one recipient: the furthest state it reached."""

    agency: AgencyId
    state: DeliveryState | None = None
    reason: ReasonCode | None = None


class MessageStatus(_Api, frozen=True, kw_only=True):
    """`GET /v1/messages/{id}`: metadata and timeline of a message this agency sent."""

    message_id: MessageId
    type: OutboundType
    created_at: UtcDateTime
    expires_at: UtcDateTime
    recipients: list[RecipientStatus]
    events: list[TimelineEvent]


class AttachmentInfo(_Api, frozen=True, kw_only=True):
    """An attachment of an inbound message: every chunk was verified before it was offered.

    `name` is the sender's file name (personal data, like the body); `sha256` the digest of
    the file, checked against every byte; `index` numbers it for
    `GET /v1/inbox/{id}/attachments/{index}` and the webhook's multipart parts.
    """

    index: Annotated[int, Meta(ge=0, le=15)]
    name: Annotated[str, Meta(min_length=1, max_length=255)]
    media_type: Annotated[str, Meta(min_length=3, max_length=255)]
    size: Annotated[int, Meta(ge=0)]
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]


class InboxItem(_Api, frozen=True, kw_only=True, omit_defaults=True):
    """An opened message, as the webhook receives it and `GET /v1/inbox/{id}` returns it.

    `consent`, `purpose` and `categories` are the signed header's; `body` was validated against
    its type before delivery. `attachments` is omitted when there are none.
    """

    message_id: MessageId
    type: InboundType
    sender: AgencyId
    consent: ConsentRef
    purpose: Code
    categories: list[Code]
    issued_at: UtcDateTime
    expires_at: UtcDateTime
    reply_to: MessageId | None
    body: Body
    attachments: list[AttachmentInfo] = []


class InboxSummary(_Api, frozen=True, kw_only=True):
    """A pending inbox item without its body (which holds the personal data)."""

    message_id: MessageId
    type: InboundType
    sender: AgencyId
    issued_at: UtcDateTime
    expires_at: UtcDateTime
    reply_to: MessageId | None


class InboxList(_Api, frozen=True, kw_only=True):
    """`GET /v1/inbox`: the items waiting for the local system's acknowledgement."""

    items: list[InboxSummary]


class Health(_Api, frozen=True, kw_only=True):
    status: Literal["ok", "unavailable"]
