"""Disclosure queries: an agency asks the audit writer what the trail says about its consents.

No agency may read the audit trail itself (it holds every agency's traffic). An agency's adapter
sends a `DisclosureQuery` naming consent ids on `bridge.disclosure.<agency>` (only that agency's
NATS identity may publish there); the broker answers only if the agency issued every one of
them, with the audit events about those consents and the messages sent under them, and with
how far the chain it read them from verified. The adapter turns the answer into the client's
disclosure report (`bridge.adapters.disclosures`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Final

import msgspec

from ..ids import CONSENT_REF_PATTERN
from .events import AuditEvent, AuditKind, AuditRecord

__all__ = [
    "MAX_ANSWER_EVENTS",
    "MAX_QUERY_CONSENTS",
    "DisclosureAnswer",
    "DisclosureQuery",
    "select_events",
]

MAX_QUERY_CONSENTS: Final = 64
MAX_ANSWER_EVENTS: Final = 2000

_Consent = Annotated[str, msgspec.Meta(pattern=CONSENT_REF_PATTERN)]


class DisclosureQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    consents: Annotated[list[_Consent], msgspec.Meta(min_length=1, max_length=MAX_QUERY_CONSENTS)]


class DisclosureAnswer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The events, and where they came from: records `first..last` of the stream, the chain
    intact between them (`verified`) and signed by checkpoints up to `signed_upto`."""

    events: list[AuditEvent] = msgspec.field(default_factory=list)
    first: int = 0
    last: int = 0
    signed_upto: int = 0
    verified: bool = False
    truncated: bool = False
    error: str | None = None  # a reason code; nothing else is set then


def select_events(
    records: Iterable[AuditRecord], consents: set[str]
) -> tuple[list[AuditEvent], bool]:
    """The events about `consents`: those naming one, and every later event about a message
    first seen under one (receipts and deletions name the message, not the consent)."""
    messages: set[tuple[str | None, str]] = set()
    found: list[AuditEvent] = []
    for event in (e for record in records for e in record.all_events):
        mine = event.consent in consents
        if (
            mine
            and event.message_id is not None
            and event.kind
            in (
                AuditKind.SUBMITTED,
                AuditKind.ACCEPTED,
                AuditKind.ROUTED,
                AuditKind.REJECTED,
            )
        ):
            messages.add((event.sender, event.message_id))
        elif not mine and event.message_id is not None:
            mine = (event.sender, event.message_id) in messages
        if mine:
            if len(found) == MAX_ANSWER_EVENTS:
                return found, True
            found.append(event)
    return found, False
