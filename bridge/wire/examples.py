"""One valid, entirely fictional example of each body and of a status event.

For tests, documentation, the OpenAPI description and the demo federation. The names are the
German placeholder names (Mustermann, Beispiel); phone numbers, addresses and ids are made up, and
e-mail domains use the reserved `.example` top-level domain.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ._blocks import Address, ClientContact, ClientIdentity, ContactPerson
from ._bodies import (
    Body,
    ConsentRevoked,
    DeletionConfirmed,
    Delivered,
    Feedback,
    Handover,
    Measure,
    MeasureStarted,
    Receipt,
    Referral,
)
from ._codes import Concern, ContactChannel, Gender, Service, Urgency
from ._status import Component, DeliveryState, StatusEvent
from ._vocab import MessageType

__all__ = ["BODIES", "STATUS_EVENT"]

_REFERRAL_ID: Final = "0b7e6c52-2f1d-4c3a-9e8b-5d4f3a2b1c0d"

_CLIENT: Final = ClientIdentity(
    family_name="Mustermann",
    given_names="Erika Maria",
    date_of_birth=datetime.date(1984, 8, 12),
    gender=Gender.FEMALE,
    birth_name="Gabler",
)
_CONTACT: Final = ClientContact(
    address=Address(street="Heidestraße", house_number="17", postal_code="51147", city="Köln"),
    phone="0171 39 20 000",
    preferred_channel=ContactChannel.PHONE,
    preferred_time="vormittags",
)

BODIES: Final[Mapping[MessageType, Body]] = MappingProxyType(
    {
        MessageType.REFERRAL: Referral(
            client=_CLIENT,
            client_contact=_CONTACT,
            requested_service=Service.ADDICTION_COUNSELLING,
            concerns=(Concern.ALCOHOL,),
            reason="Frau Mustermann wünscht Unterstützung wegen ihres Alkoholkonsums.",
            urgency=Urgency.SOON,
            contact_person=ContactPerson(
                name="Max Beispiel",
                phone="0221 9876 5432",
                email="max.beispiel@jobcenter.example",
                unit="Team 123, Fallmanagement",
            ),
            notes="Termine bitte nicht vor 10 Uhr.\nSchweigepflichtentbindung liegt vor.",
        ),
        MessageType.HANDOVER: Handover(
            client=_CLIENT,
            client_contact=_CONTACT,
            from_service=Service.ADDICTION_COUNSELLING,
            to_service=Service.ADDICTION_REHABILITATION,
            summary="Seit März in Beratung, regelmäßige Termine, Abstinenzwunsch.",
            measures_taken=(
                Measure(description="Motivationsgruppe", started_on=datetime.date(2025, 3, 4)),
            ),
            reason="Antrag auf Entwöhnungsbehandlung ist bewilligt.",
            urgency=Urgency.ROUTINE,
            contact_person=ContactPerson(name="Anna Muster", phone="+49 221 555 0100"),
        ),
        MessageType.FEEDBACK: Feedback(
            in_reply_to=_REFERRAL_ID,
            outcome=MeasureStarted(),
            occurred_on=datetime.date(2025, 3, 4),
            next_appointment_on=datetime.date(2025, 3, 18),
        ),
        MessageType.RECEIPT: Receipt(
            in_reply_to=_REFERRAL_ID,
            received_at=datetime.datetime(2025, 2, 20, 9, 15, 0, tzinfo=datetime.UTC),
            disposition=Delivered(),
        ),
        MessageType.CONSENT_REVOKED: ConsentRevoked(
            consent="c-5d1f0a9e3b7c4e2a8f6d1b0c9e7a3f52",
            withdrawn_at=datetime.datetime(2025, 4, 2, 10, 0, 0, tzinfo=datetime.UTC),
            messages=(_REFERRAL_ID,),
        ),
        MessageType.DELETION_CONFIRMED: DeletionConfirmed(
            in_reply_to="3c1d9e2a-7b4f-4a8e-9c6d-2f0b1e5a7d93",
            consent="c-5d1f0a9e3b7c4e2a8f6d1b0c9e7a3f52",
            deleted_at=datetime.datetime(2025, 4, 2, 14, 30, 0, tzinfo=datetime.UTC),
            messages=(_REFERRAL_ID,),
        ),
    }
)

STATUS_EVENT: Final = StatusEvent(
    message_id=_REFERRAL_ID,
    sender="jobcenter-koeln",
    recipient="suchtberatung-koeln-sued",
    message_type=MessageType.REFERRAL,
    state=DeliveryState.ROUTED,
    at=datetime.datetime(2025, 2, 20, 9, 14, 58, tzinfo=datetime.UTC),
    component=Component.BROKER,
)
