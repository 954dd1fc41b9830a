"""What travels inside envelopes and on the status stream: message bodies and status events.

Bodies are strict JSON: referral (Vermittlung), handover (Übergabe), feedback (Rückmeldung) and
receipt (Empfangsbestätigung). Personal data lives only in bodies, which only ever travel
encrypted. Status events and the purpose and data-category codes are metadata and hold none.
docs/messages.md describes every field; `bridge.schemas` derives JSON Schemas from these structs.
"""

from __future__ import annotations

from ._blocks import Address, ClientContact, ClientIdentity, ContactPerson
from ._bodies import (
    BODY_TYPES,
    AppointmentKept,
    AppointmentNotKept,
    Body,
    ClientDeclined,
    ClientUnreachable,
    ConsentRevoked,
    DeletionConfirmed,
    Delivered,
    Disposition,
    Feedback,
    Handover,
    Measure,
    MeasureEnded,
    MeasureStarted,
    Outcome,
    Receipt,
    Referral,
    Rejected,
    message_type_of,
)
from ._codec import (
    MAX_BODY_BYTES,
    BodyInvalid,
    WireInvalid,
    decode_body,
    decode_strict,
    encode_body,
)
from ._codes import Concern, ContactChannel, EndReason, Gender, Service, Urgency
from ._status import (
    MAX_STATUS_EVENT_BYTES,
    PULL_EXPIRED_REASON,
    Component,
    DeliveryState,
    StatusEvent,
    StatusEventInvalid,
    decode_status_event,
    encode_status_event,
)
from ._types import MESSAGE_ID_PATTERN, REASON_CODE_PATTERN, PolicyHash
from ._vocab import ALLOWED_CATEGORIES, DataCategory, MessageType, Purpose

__all__ = [
    "ALLOWED_CATEGORIES",
    "BODY_TYPES",
    "MAX_BODY_BYTES",
    "MAX_STATUS_EVENT_BYTES",
    "MESSAGE_ID_PATTERN",
    "PULL_EXPIRED_REASON",
    "REASON_CODE_PATTERN",
    "Address",
    "AppointmentKept",
    "AppointmentNotKept",
    "Body",
    "BodyInvalid",
    "ClientContact",
    "ClientDeclined",
    "ClientIdentity",
    "ClientUnreachable",
    "Component",
    "Concern",
    "ConsentRevoked",
    "ContactChannel",
    "ContactPerson",
    "DataCategory",
    "DeletionConfirmed",
    "Delivered",
    "DeliveryState",
    "Disposition",
    "EndReason",
    "Feedback",
    "Gender",
    "Handover",
    "Measure",
    "MeasureEnded",
    "MeasureStarted",
    "MessageType",
    "Outcome",
    "PolicyHash",
    "Purpose",
    "Receipt",
    "Referral",
    "Rejected",
    "Service",
    "StatusEvent",
    "StatusEventInvalid",
    "Urgency",
    "WireInvalid",
    "decode_body",
    "decode_status_event",
    "decode_strict",
    "encode_body",
    "encode_status_event",
    "message_type_of",
]
