"""The message bodies: referral, handover, feedback, receipt, and the two consent notices.

A body is JSON inside the encrypted envelope and the same JSON on the adapters' local HTTP API.
Each carries its type as the tag `type`, which must equal the type in the signed envelope header:
a body cannot be read as another kind of message than the one that was signed.

Outcomes and dispositions are tagged unions rather than a code plus optional fields, so that
"measure ended" cannot arrive without an end reason and "rejected" not without a reason code,
and so the generated JSON Schema says the same as the structs.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Final, TypeAlias

import msgspec
from msgspec import Meta

from ..ids import CONSENT_REF_PATTERN
from ._blocks import ClientContact, ClientIdentity, ContactPerson
from ._codes import Concern, EndReason, Service, Urgency
from ._types import MessageId, ReasonCode, ShortText, Text, UtcDateTime, WireStruct, normalise_utc
from ._vocab import MessageType

__all__ = [
    "BODY_TYPES",
    "AppointmentKept",
    "AppointmentNotKept",
    "Body",
    "ClientDeclined",
    "ClientUnreachable",
    "ConsentRevoked",
    "DeletionConfirmed",
    "Delivered",
    "Disposition",
    "Feedback",
    "Handover",
    "Measure",
    "MeasureEnded",
    "MeasureStarted",
    "Outcome",
    "Receipt",
    "Referral",
    "Rejected",
    "message_type_of",
]


class _Body(WireStruct, frozen=True, kw_only=True, tag_field="type"):
    pass


# -- referral (Vermittlung) -------------------------------------------------------------------


class Referral(_Body, frozen=True, kw_only=True, tag=MessageType.REFERRAL.value):
    """A Jobcenter refers a client to a counselling or treatment service."""

    client: ClientIdentity
    client_contact: ClientContact
    requested_service: Service
    # The receiving service routes on these; the free-text reason explains them.
    concerns: Annotated[tuple[Concern, ...], Meta(max_length=8)] = ()
    reason: ShortText
    urgency: Urgency
    contact_person: ContactPerson
    notes: Text | None = None


# -- handover (Übergabe) ----------------------------------------------------------------------


class Measure(WireStruct, frozen=True, kw_only=True):
    """One measure already taken in the case (Maßnahme), with its dates when known."""

    description: ShortText
    started_on: datetime.date | None = None
    ended_on: datetime.date | None = None


class Handover(_Body, frozen=True, kw_only=True, tag=MessageType.HANDOVER.value):
    """A service hands a case over to another service."""

    client: ClientIdentity
    client_contact: ClientContact
    from_service: Service
    to_service: Service
    summary: Text  # the case so far
    measures_taken: Annotated[tuple[Measure, ...], Meta(max_length=20)] = ()
    reason: ShortText  # why the case is handed over
    urgency: Urgency
    contact_person: ContactPerson
    notes: Text | None = None


# -- feedback (Rückmeldung) -------------------------------------------------------------------


class _Outcome(WireStruct, frozen=True, kw_only=True, tag_field="code"):
    pass


class AppointmentKept(_Outcome, frozen=True, kw_only=True, tag="first-appointment-kept"):
    """The client came to the first appointment (Erstgespräch wahrgenommen)."""


class AppointmentNotKept(_Outcome, frozen=True, kw_only=True, tag="first-appointment-not-kept"):
    """The client did not come to the first appointment."""


class MeasureStarted(_Outcome, frozen=True, kw_only=True, tag="measure-started"):
    """Counselling or treatment has begun."""


class MeasureEnded(_Outcome, frozen=True, kw_only=True, tag="measure-ended"):
    """Counselling or treatment has ended, and why."""

    end_reason: EndReason
    transferred_to: Service | None = None  # when end_reason is "transferred", if known


class ClientDeclined(_Outcome, frozen=True, kw_only=True, tag="client-declined"):
    """The client declined the service."""


class ClientUnreachable(_Outcome, frozen=True, kw_only=True, tag="client-unreachable"):
    """The service could not reach the client."""


Outcome: TypeAlias = (
    AppointmentKept
    | AppointmentNotKept
    | MeasureStarted
    | MeasureEnded
    | ClientDeclined
    | ClientUnreachable
)


class Feedback(_Body, frozen=True, kw_only=True, tag=MessageType.FEEDBACK.value):
    """An answer to an earlier referral or handover: what happened, as little as needed.

    No identity or contact block: the receiver finds the case by `in_reply_to`. The next
    appointment is a date without a time because the referrer needs no more.
    """

    in_reply_to: MessageId
    outcome: Outcome
    occurred_on: datetime.date  # the day the outcome refers to
    next_appointment_on: datetime.date | None = None
    note: ShortText | None = None


# -- receipt (Empfangsbestätigung) ------------------------------------------------------------


class _Disposition(WireStruct, frozen=True, kw_only=True, tag_field="code"):
    pass


class Delivered(_Disposition, frozen=True, kw_only=True, tag="delivered"):
    """The recipient's local system accepted the message.

    `attachments`: the SHA-256 (hex) of each attachment the recipient received and checked, in
    the order of the envelope's list; omitted for a message without attachments.
    """

    attachments: Annotated[
        list[Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]], Meta(max_length=16)
    ] = msgspec.field(default_factory=list)


class Rejected(_Disposition, frozen=True, kw_only=True, tag="rejected"):
    """The recipient's adapter or local system refused the message, and why (a code only)."""

    reason: ReasonCode


Disposition: TypeAlias = Delivered | Rejected


class Receipt(_Body, frozen=True, kw_only=True, tag=MessageType.RECEIPT.value):
    """The recipient's signed acknowledgement that its local system received a message.

    Metadata only: which message, when, delivered or rejected. No personal data.
    """

    in_reply_to: MessageId
    received_at: UtcDateTime
    disposition: Disposition

    def __post_init__(self) -> None:
        normalise_utc(self, "received_at")


# -- consent withdrawal (Widerruf) and deletion (Löschbestätigung) -------------------------------

ConsentId = Annotated[str, Meta(min_length=34, max_length=36, pattern=CONSENT_REF_PATTERN)]
MessageIds = Annotated[tuple[MessageId, ...], Meta(min_length=1, max_length=4096)]


class ConsentRevoked(_Body, frozen=True, kw_only=True, tag=MessageType.CONSENT_REVOKED.value):
    """The issuing agency's notice: the client withdrew `consent`; delete what you received.

    Sent to each recipient that already received messages under the consent, naming them.
    Metadata only. The recipient's system answers by confirming the deletion.
    """

    consent: ConsentId
    withdrawn_at: UtcDateTime
    messages: MessageIds

    def __post_init__(self) -> None:
        normalise_utc(self, "withdrawn_at")


class DeletionConfirmed(_Body, frozen=True, kw_only=True, tag=MessageType.DELETION_CONFIRMED.value):
    """The recipient's signed confirmation that its system deleted the data a notice named."""

    in_reply_to: MessageId  # the consent-revoked notice
    consent: ConsentId
    deleted_at: UtcDateTime
    messages: MessageIds

    def __post_init__(self) -> None:
        normalise_utc(self, "deleted_at")


Body: TypeAlias = Referral | Handover | Feedback | Receipt | ConsentRevoked | DeletionConfirmed

BODY_TYPES: Final[Mapping[MessageType, type[Body]]] = MappingProxyType(
    {
        MessageType.REFERRAL: Referral,
        MessageType.HANDOVER: Handover,
        MessageType.FEEDBACK: Feedback,
        MessageType.RECEIPT: Receipt,
        MessageType.CONSENT_REVOKED: ConsentRevoked,
        MessageType.DELETION_CONFIRMED: DeletionConfirmed,
    }
)

_TYPE_OF: Final[Mapping[type[Body], MessageType]] = {v: k for k, v in BODY_TYPES.items()}


def message_type_of(body: Body) -> MessageType:
    """The message type an envelope carrying `body` must declare."""
    try:
        return _TYPE_OF[type(body)]
    except KeyError:
        raise TypeError(f"not a message body: {type(body).__name__}") from None
