"""Validated identifiers: agency ids, message ids, consent references and codes.

Agency ids end up in NATS subjects, stream and consumer names and file names, so they are
restricted to lowercase letters, digits and hyphens (at most 63 characters, starting with a
letter or digit, not ending with a hyphen). Nothing with `.`, `*`, `>` or whitespace can pass.
"""

from __future__ import annotations

import re
import uuid

from .errors import ProtocolError

__all__ = [
    "AGENCY_ID_PATTERN",
    "CODE_PATTERN",
    "CONSENT_REF_PATTERN",
    "MESSAGE_ID_PATTERN",
    "MESSAGE_TYPES",
    "NO_CONSENT",
    "SYSTEM_MESSAGE_TYPES",
    "check_agency_id",
    "check_code",
    "check_consent_ref",
    "check_message_id",
    "is_agency_id",
    "new_message_id",
]

# Every pattern ends in `$(?!\n)`: msgspec (and jsonschema) match with Python's re.search, where
# a bare `$` also matches before a final newline, so "health\n" would pass as "health".
AGENCY_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$(?!\n)"
# A consent reference names a consent record without naming the client: "c-" and 32 hex digits
# or a UUID. It must never carry a case number or pseudonym, so free text is refused.
CONSENT_REF_PATTERN = (
    r"^(?:c-[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$(?!\n)"
)
# The reference a message carries when it names no consent (a flow that needs none, such as a
# receipt of a message without one); a flow that needs a consent refuses it as `consent.missing`.
NO_CONSENT = "c-" + "0" * 32
# Purpose and data-category codes: short lowercase words joined by hyphens.
CODE_PATTERN = r"^[a-z][a-z0-9-]{0,47}$(?!\n)"
# A message id: a lowercase random (version 4) UUID in canonical text form.
MESSAGE_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$(?!\n)"

# The message types an envelope may carry; their bodies are defined in bridge.wire.
MESSAGE_TYPES = (
    "referral",
    "handover",
    "feedback",
    "receipt",
    "consent-revoked",
    "deletion-confirmed",
)
# The types bridge itself sends about other messages (receipts, notices): no personal data, no
# consent of their own. The routing policy lets them travel along every allowed flow, either way,
# without a rule each (bridge.policy); every other type needs a rule.
SYSTEM_MESSAGE_TYPES = ("receipt", "consent-revoked", "deletion-confirmed")

_AGENCY_RE = re.compile(AGENCY_ID_PATTERN)
_CONSENT_RE = re.compile(CONSENT_REF_PATTERN)
_CODE_RE = re.compile(CODE_PATTERN)
_UUID_RE = re.compile(MESSAGE_ID_PATTERN)


def is_agency_id(value: object) -> bool:
    return isinstance(value, str) and _AGENCY_RE.fullmatch(value) is not None


def check_agency_id(value: object) -> str:
    """Return `value` if it is a well-formed agency id, else raise `ProtocolError`."""
    if not is_agency_id(value):
        raise ProtocolError(
            "agency id must be 1-63 lowercase letters, digits or hyphens, "
            "not starting or ending with a hyphen",
            reason="id.agency_malformed",
        )
    assert isinstance(value, str)
    return value


def new_message_id() -> str:
    return str(uuid.uuid4())


def check_message_id(value: object) -> str:
    """A message id is a lowercase random (version 4) UUID in its canonical text form."""
    if not isinstance(value, str) or _UUID_RE.fullmatch(value) is None:
        raise ProtocolError("message id must be a lowercase UUIDv4", reason="id.message_malformed")
    return value


def check_consent_ref(value: object) -> str:
    if not isinstance(value, str) or _CONSENT_RE.fullmatch(value) is None:
        raise ProtocolError(
            "consent reference must be 'c-' and 32 hex digits, or a lowercase UUID",
            reason="id.consent_malformed",
        )
    return value


def check_code(value: object, what: str = "code") -> str:
    if not isinstance(value, str) or _CODE_RE.fullmatch(value) is None:
        raise ProtocolError(
            f"{what} must be a lowercase code (letters, digits, hyphens, at most 48)",
            reason="id.code_malformed",
        )
    return value
