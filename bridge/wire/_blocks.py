"""Blocks that several bodies share: who the client is, how to reach them, who to ask.

These hold personal data and exist only inside encrypted bodies. Client identity and client
contact are separate blocks because they are separate data categories (`identity`, `contact`)
that a consent may release separately.
"""

from __future__ import annotations

import datetime

from ._codes import ContactChannel, Gender
from ._types import (
    CountryCode,
    Email,
    HouseNumber,
    LanguageTag,
    Line,
    Name,
    Phone,
    PostalCode,
    WireStruct,
)

__all__ = ["Address", "ClientContact", "ClientIdentity", "ContactPerson"]


class ClientIdentity(WireStruct, frozen=True, kw_only=True):
    """Enough to identify the client at the receiving service, and nothing more.

    A date of birth with unknown day or month is sent as the sending system records it (usually
    the 1st of January or of the month); the wire cannot carry partial dates.
    """

    family_name: Name
    given_names: Name
    date_of_birth: datetime.date
    gender: Gender | None = None
    birth_name: Name | None = None


class Address(WireStruct, frozen=True, kw_only=True):
    """A postal address. Optional in every body: many clients have none (Wohnungslosigkeit)."""

    street: Name
    house_number: HouseNumber | None = None
    extra: Name | None = None  # Adresszusatz: "c/o", "bei Müller", "Hinterhaus"
    postal_code: PostalCode
    city: Name
    country: CountryCode = "DE"


class ClientContact(WireStruct, frozen=True, kw_only=True):
    """How to reach the client. Every field is optional; send what the client agreed to."""

    address: Address | None = None
    phone: Phone | None = None
    email: Email | None = None
    preferred_channel: ContactChannel | None = None
    preferred_time: Line | None = None  # e.g. "vormittags", "nicht montags"
    language: LanguageTag | None = None  # only when not German
    interpreter_needed: bool = False


class ContactPerson(WireStruct, frozen=True, kw_only=True):
    """The sending agency's staff member for this case, never the client.

    A phone number is required because every service has one (a hotline at least); an e-mail
    address is welcome but not every practice has a personal one.
    """

    name: Name
    phone: Phone
    email: Email | None = None
    unit: Line | None = None  # team or department, e.g. "Team 123, Fallmanagement"
