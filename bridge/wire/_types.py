"""Bounded field types shared by the wire structs.

Every string on the wire has a length limit and, where a receiving system relies on its shape, a
light pattern. The patterns are plain character classes on purpose: they keep control characters,
line breaks in one-line fields and bidirectional overrides (which can make a name display as
another) out of case systems, without pretending to validate names or addresses.

Every pattern is written for both Python's `re` (msgspec, jsonschema) and ECMA-262 (JSON Schema
consumers), and anchored, because both engines search rather than match.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Final

from msgspec import Meta, Struct
from msgspec.structs import force_setattr

from ..ids import AGENCY_ID_PATTERN, MESSAGE_ID_PATTERN

__all__ = [
    "MESSAGE_ID_PATTERN",
    "REASON_CODE_PATTERN",
    "AgencyId",
    "CountryCode",
    "Email",
    "HouseNumber",
    "LanguageTag",
    "Line",
    "MessageId",
    "Name",
    "Phone",
    "PolicyHash",
    "PostalCode",
    "ReasonCode",
    "ShortText",
    "Text",
    "UtcDateTime",
    "WireStruct",
    "normalise_utc",
]


class WireStruct(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """Base of every wire struct.

    Frozen so a checked value cannot change after decoding; unknown fields refused so a typo or
    a field this version does not know fails loudly instead of being dropped; defaults omitted
    when encoding so a field added later (always with a default) reaches older readers only when
    it is actually used; keyword-only so nobody swaps a family name and a given name by position.
    Subclasses repeat `frozen=True, kw_only=True`: msgspec inherits them, type checkers do not.
    """


# Characters no field may contain: C0 and C1 controls, DEL, the Unicode line and paragraph
# separators, and the bidirectional embedding, override and isolate controls.
_NEVER = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
# Multi-line text may contain tab, line feed and carriage return, nothing else from that set.
_NEVER_IN_TEXT = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"

# One line, no leading or trailing whitespace (so "Müller " and "Müller" cannot both exist).
_LINE = rf"^[^\s{_NEVER}](?:[^{_NEVER}]*[^\s{_NEVER}])?$(?!\n)"
# Free text: at least one visible character somewhere.
_TEXT = rf"^[^{_NEVER_IN_TEXT}]*[^\s{_NEVER_IN_TEXT}][^{_NEVER_IN_TEXT}]*$(?!\n)"

# Reason codes as carried by BridgeError.reason: lowercase words, dots between them.
REASON_CODE_PATTERN: Final = r"^[a-z][a-z0-9_-]*(?:\.[a-z][a-z0-9_-]*)*$(?!\n)"

Line = Annotated[str, Meta(min_length=1, max_length=200, pattern=_LINE)]
"""A single line of text, e.g. a preferred contact time or an organisational unit."""

Name = Annotated[str, Meta(min_length=1, max_length=120, pattern=_LINE)]
"""A person's name or a place name."""

Text = Annotated[str, Meta(min_length=1, max_length=4000, pattern=_TEXT)]
"""Free text that may span lines: notes, summaries."""

ShortText = Annotated[str, Meta(min_length=1, max_length=1000, pattern=_TEXT)]
"""Free text kept short on purpose (reasons, feedback notes, single measures)."""

Email = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=254,
        pattern=r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$(?!\n)",
    ),
]
"""An e-mail address: something, an at sign, a domain with a dot. Deliverability is not ours."""

Phone = Annotated[
    str, Meta(min_length=3, max_length=32, pattern=r"^\+?[0-9(][0-9 ()/-]*[0-9]$(?!\n)")
]
"""A phone number as people write it: "+49 30 1234567", "(030) 123 45-67", "0171/1234567"."""

PostalCode = Annotated[
    str, Meta(min_length=2, max_length=10, pattern=r"^[0-9A-Z][0-9A-Z -]*[0-9A-Z]$(?!\n)")
]
"""A postal code; five digits in Germany, other shapes abroad."""

HouseNumber = Annotated[str, Meta(min_length=1, max_length=16, pattern=_LINE)]

CountryCode = Annotated[str, Meta(min_length=2, max_length=2, pattern=r"^[A-Z]{2}$(?!\n)")]
"""ISO 3166-1 alpha-2."""

LanguageTag = Annotated[
    str, Meta(min_length=2, max_length=35, pattern=r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8}){0,3}$(?!\n)")
]
"""A BCP 47 language tag such as "de", "tr", "uk", "ar-SY"."""

MessageId = Annotated[str, Meta(min_length=36, max_length=36, pattern=MESSAGE_ID_PATTERN)]
AgencyId = Annotated[str, Meta(min_length=1, max_length=63, pattern=AGENCY_ID_PATTERN)]
ReasonCode = Annotated[str, Meta(min_length=1, max_length=64, pattern=REASON_CODE_PATTERN)]
PolicyHash = Annotated[str, Meta(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$(?!\n)")]
"""SHA-256 (hex) of a signed routing policy version (`bridge.policy.Policy.hash`)."""

UtcDateTime = Annotated[datetime.datetime, Meta(tz=True)]
"""An aware datetime; structs holding one call `normalise_utc` so the value is always UTC."""


def normalise_utc(struct: Struct, field: str) -> None:
    """Turn an aware datetime field into UTC in place; refuse naive ones.

    Decoding already refuses naive datetimes (`Meta(tz=True)`); this catches structs built in
    Python. Any offset is accepted and converted, so "+01:00" and "Z" for the same instant
    decode to equal values and always encode as "Z".
    """
    value = getattr(struct, field)
    if not isinstance(value, datetime.datetime) or value.utcoffset() is None:
        raise ValueError("Expected `datetime` with a timezone component")
    if value.tzinfo is not datetime.UTC:
        force_setattr(struct, field, value.astimezone(datetime.UTC))
