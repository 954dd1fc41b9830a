"""The code vocabularies shared by envelope headers, bodies and policy.

Codes, not free text, wherever a receiving system or the broker has to branch. Purpose and
data-category codes travel in the cleartext envelope header and in consent records, so they match
`bridge.ids.CODE_PATTERN` and say what kind of data a message holds, never whose.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "ALLOWED_CATEGORIES",
    "DataCategory",
    "MessageType",
    "Purpose",
]


class MessageType(enum.StrEnum):
    """The kinds of message body; the envelope header names one of them. The last three are
    system notices bridge sends itself (no personal data, no consent of their own)."""

    REFERRAL = "referral"  # Vermittlung
    HANDOVER = "handover"  # Übergabe
    FEEDBACK = "feedback"  # Rückmeldung
    RECEIPT = "receipt"  # Empfangsbestätigung
    CONSENT_REVOKED = "consent-revoked"  # Widerruf: delete what you received under a consent
    DELETION_CONFIRMED = "deletion-confirmed"  # Löschbestätigung, the answer to it


class Purpose(enum.StrEnum):
    """Why data is transferred; a consent names the purposes it covers (GDPR Art. 5(1)(b))."""

    INTEGRATION_SUPPORT = "integration-support"  # SGB II § 16a kommunale Eingliederungsleistungen
    COUNSELLING = "counselling"  # Beratung by the receiving service
    TREATMENT_COORDINATION = "treatment-coordination"  # Behandlungskoordination
    CASE_HANDOVER = "case-handover"  # Fallübergabe
    DELIVERY_CONFIRMATION = "delivery-confirmation"  # technical acknowledgement only


class DataCategory(enum.StrEnum):
    """What kind of personal data a body holds; a consent names the categories it covers.

    `health` and `addiction` are special categories (GDPR Art. 9). `addiction` is separate from
    `health` because consent forms in counselling commonly release one without the other.
    """

    IDENTITY = "identity"  # names, date of birth, gender
    CONTACT = "contact"  # address, phone, e-mail, contact preferences, language
    HEALTH = "health"  # physical or mental health, diagnoses, treatment
    ADDICTION = "addiction"  # substance use, gambling, addiction treatment
    SOCIAL_SITUATION = "social-situation"  # housing, debts, family
    EMPLOYMENT = "employment"  # benefits, work and training history, integration measures
    CASE_NOTES = "case-notes"  # free-text assessments and notes
    # Not personal data: message ids and delivery times. Receipts declare it, because an
    # envelope header must name at least one category and a receipt holds none of the above.
    DELIVERY_METADATA = "delivery-metadata"


_PERSONAL: Final = frozenset(DataCategory) - {DataCategory.DELIVERY_METADATA}

ALLOWED_CATEGORIES: Final[Mapping[MessageType, frozenset[DataCategory]]] = MappingProxyType(
    {
        # Identity, contact and the free-text reason and notes can touch any category.
        MessageType.REFERRAL: _PERSONAL,
        MessageType.HANDOVER: _PERSONAL,
        # No identity or contact block; but that a client kept an appointment at an addiction
        # or social-psychiatric service is itself health data, and the note is case notes.
        MessageType.FEEDBACK: frozenset(
            {DataCategory.HEALTH, DataCategory.ADDICTION, DataCategory.CASE_NOTES}
        ),
        # Metadata about delivery only.
        MessageType.RECEIPT: frozenset({DataCategory.DELIVERY_METADATA}),
        MessageType.CONSENT_REVOKED: frozenset({DataCategory.DELIVERY_METADATA}),
        MessageType.DELETION_CONFIRMED: frozenset({DataCategory.DELIVERY_METADATA}),
    }
)
"""The categories a body of each type may carry: an upper bound for the header's category list."""
