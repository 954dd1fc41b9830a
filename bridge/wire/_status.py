"""Status events: what happened to a message on its way, for senders and operations.

Published on NATS (`bridge.nats.subjects.status_subject`) as JSON, so operators can read them with
ordinary tools and the same JSON Schema describes them. Metadata only: ids, agencies, a state, a
reason code, a time. Nothing from inside an envelope ever goes here.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from ._codec import WireInvalid, decode_strict
from ._types import (
    AgencyId,
    MessageId,
    PolicyHash,
    ReasonCode,
    UtcDateTime,
    WireStruct,
    normalise_utc,
)
from ._vocab import MessageType

__all__ = [
    "MAX_STATUS_EVENT_BYTES",
    "PULL_EXPIRED_REASON",
    "Component",
    "DeliveryState",
    "StatusEvent",
    "StatusEventInvalid",
    "decode_status_event",
    "encode_status_event",
]

MAX_STATUS_EVENT_BYTES: Final = 4096
PULL_EXPIRED_REASON: Final = "retention.pull_expired"
"""Why a message `expired` that waited in a recipient's pull inbox longer than its type's
`pull_wait`: the recipient's adapter removed it and says so in a `rejected` receipt with this
reason, which the broker reports to the sender as `expired`."""


class DeliveryState(enum.StrEnum):
    """Where a message is. The usual course is accepted, routed, delivered, receipted;
    `rejected`, `expired` and `withdrawn` end it (for one recipient when the event names one)."""

    ACCEPTED = "accepted"  # the sender's adapter sealed it and submitted it
    REJECTED = "rejected"  # refused, by the broker or the recipient; see the reason
    ROUTED = "routed"  # the broker checked it and put it in the recipient's inbox
    DELIVERED = "delivered"  # the recipient's adapter handed it to the local system
    RECEIPTED = "receipted"  # the sender received the recipient's signed receipt
    EXPIRED = "expired"  # its retention limit ran out before delivery; the store removed it
    # A warning to the recipient (the event goes to the recipient's status subject): the
    # message still waits undelivered in its inbox and will expire at the event's `expires_at`.
    EXPIRING = "expiring"
    WITHDRAWN = "withdrawn"  # removed from the recipient's inbox: its consent was withdrawn


class Component(enum.StrEnum):
    """The part of bridge that emitted the event."""

    ADAPTER = "adapter"
    BROKER = "broker"


class StatusEvent(WireStruct, frozen=True, kw_only=True):
    """One step in a message's delivery, as seen by one component.

    `attempt` is set when the recipient's adapter reports a redelivery: the message is still
    routed and waiting, and this is its n-th delivery from the inbox.
    """

    message_id: MessageId
    sender: AgencyId
    recipient: AgencyId | None = None  # absent when the event concerns all recipients
    message_type: MessageType | None = None
    state: DeliveryState
    reason: ReasonCode | None = None  # for `rejected` and `expired`, e.g. "consent.revoked"
    at: UtcDateTime
    component: Component
    # For `expiring`: when the inbox copy is removed. On `routed` and the sender's `accepted`
    # report: when the message ends if undelivered (for operations: near expiry).
    expires_at: UtcDateTime | None = None
    # The routing policy version that made a broker's decision (routed or rejected).
    policy: PolicyHash | None = None
    attempt: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None

    def __post_init__(self) -> None:
        normalise_utc(self, "at")
        if self.expires_at is not None:
            normalise_utc(self, "expires_at")


class StatusEventInvalid(WireInvalid):
    """A status event failed to decode: `status.malformed`, `status.invalid`, `status.too_large`."""

    reason = "status.invalid"


_decoder: Final = msgspec.json.Decoder(StatusEvent)
_encoder: Final = msgspec.json.Encoder()


def decode_status_event(data: bytes) -> StatusEvent:
    """Decode a status event; raises `StatusEventInvalid` naming the field path."""
    return decode_strict(
        _decoder,
        data,
        limit=MAX_STATUS_EVENT_BYTES,
        error=StatusEventInvalid,
        what="status event",
        prefix="status",
    )


def encode_status_event(event: StatusEvent) -> bytes:
    """Encode `event` as compact JSON, checked to decode again (see `encode_body`)."""
    try:
        data = _encoder.encode(event)
    except (TypeError, UnicodeEncodeError):
        raise StatusEventInvalid("status event cannot be encoded") from None
    decode_status_event(data)
    return data
