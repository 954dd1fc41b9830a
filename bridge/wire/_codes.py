"""Codes inside message bodies that a receiving system branches on.

Each enum's values are stable wire codes; add values, never rename or reuse one. A receiver that
does not know a new value rejects the body (strict decoding), so new values are introduced only
after every receiver has been upgraded.
"""

from __future__ import annotations

import enum

__all__ = [
    "Concern",
    "ContactChannel",
    "EndReason",
    "Gender",
    "Service",
    "Urgency",
]


class Service(enum.StrEnum):
    """A kind of service: what is requested in a referral, what hands over and takes over."""

    EMPLOYMENT_INTEGRATION = "employment-integration"  # Jobcenter: Eingliederung in Arbeit
    ADDICTION_COUNSELLING = "addiction-counselling"  # Suchtberatung
    SOCIAL_PSYCHIATRIC_COUNSELLING = "social-psychiatric-counselling"  # SpDi
    PSYCHOSOCIAL_SUPPORT = "psychosocial-support"  # psychosoziale Betreuung, SGB II § 16a
    DEBT_COUNSELLING = "debt-counselling"  # Schuldnerberatung, SGB II § 16a
    PSYCHOTHERAPY = "psychotherapy"  # Psychotherapie
    MEDICAL_ASSESSMENT = "medical-assessment"  # ärztliche Begutachtung
    MEDICAL_TREATMENT = "medical-treatment"  # ärztliche Behandlung, including substitution
    ADDICTION_REHABILITATION = "addiction-rehabilitation"  # Entwöhnungsbehandlung


class Urgency(enum.StrEnum):
    """How soon the receiving service should make contact. Never a substitute for emergency
    services: acute danger to self or others is a call, not a message."""

    ROUTINE = "routine"  # within the service's usual waiting time
    SOON = "soon"  # within about a week
    URGENT = "urgent"  # within one or two working days


class Concern(enum.StrEnum):
    """What a referral is about, so the receiver can route it to the right team. Optional:
    send only what the receiver needs (data minimisation)."""

    ALCOHOL = "alcohol"
    ILLEGAL_DRUGS = "illegal-drugs"
    MEDICATION = "medication"  # misuse of prescription drugs
    GAMBLING = "gambling"
    MEDIA_USE = "media-use"
    MENTAL_HEALTH = "mental-health"
    OTHER = "other"


class Gender(enum.StrEnum):
    """Gender as recorded in German civil status law (PStG § 22(3))."""

    FEMALE = "female"  # weiblich
    MALE = "male"  # männlich
    DIVERSE = "diverse"  # divers
    UNSPECIFIED = "unspecified"  # ohne Angabe


class ContactChannel(enum.StrEnum):
    """How the client prefers to be contacted."""

    PHONE = "phone"
    TEXT_MESSAGE = "text-message"
    EMAIL = "email"
    LETTER = "letter"
    IN_PERSON = "in-person"
    # For clients without a reliable address or phone: contact through the referring agency.
    VIA_REFERRER = "via-referrer"


class EndReason(enum.StrEnum):
    """Why a measure ended."""

    COMPLETED = "completed"  # regulär beendet
    ABORTED = "aborted"  # abgebrochen, by the client or the service
    TRANSFERRED = "transferred"  # weitervermittelt to another service
