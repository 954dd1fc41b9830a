"""A sent message's timeline as the API shows it, derived from its KV record.

`expired` is stored when the broker reports that the store removed the undelivered copy (a
non-delivery notice with its reason). Until that report arrives it is also derived: a
recipient's state is expired when `expires_at` passed before the message was delivered to it
(or rejected).
"""

from __future__ import annotations

import datetime
from typing import Final

from ..wire import DeliveryState
from .api import MessageStatus, RecipientStatus, TimelineEvent
from .store import Event, MessageRecord

__all__ = ["message_status"]

_RANK: Final = {
    DeliveryState.ACCEPTED: 0,
    DeliveryState.ROUTED: 1,
    DeliveryState.DELIVERED: 2,
    DeliveryState.RECEIPTED: 3,
}


def _utc(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _state(event: Event) -> DeliveryState | None:
    try:
        return DeliveryState(event.state)
    except ValueError:
        return None  # a state a newer broker knows; shown in no summary


def _recipient_status(record: MessageRecord, agency: str, now: int) -> tuple[RecipientStatus, bool]:
    """The recipient's summary, and whether it is (derived) expired."""
    best: DeliveryState | None = None
    for event in record.events:
        state = _state(event)
        if state is None or event.recipient not in (None, agency):
            continue
        if state in (DeliveryState.REJECTED, DeliveryState.EXPIRED, DeliveryState.WITHDRAWN):
            return RecipientStatus(agency=agency, state=state, reason=event.reason), False
        if state in _RANK and (best is None or _RANK[state] > _RANK[best]):
            best = state
    reached = best is not None and _RANK[best] >= _RANK[DeliveryState.DELIVERED]
    if not reached and now >= record.expires_at:
        return RecipientStatus(agency=agency, state=DeliveryState.EXPIRED), True
    return RecipientStatus(agency=agency, state=best), False


def message_status(record: MessageRecord, now: int) -> MessageStatus:
    events = [
        TimelineEvent(
            state=state, at=_utc(e.at), recipient=e.recipient, reason=e.reason, policy=e.policy
        )
        for e in record.events
        if (state := _state(e)) is not None
    ]
    recipients = []
    for agency in record.recipients:
        status, expired = _recipient_status(record, agency, now)
        recipients.append(status)
        if expired:
            events.append(
                TimelineEvent(
                    state=DeliveryState.EXPIRED, at=_utc(record.expires_at), recipient=agency
                )
            )
    events.sort(key=lambda e: e.at)
    return MessageStatus(
        message_id=record.message_id,
        type=record.type,  # type: ignore[arg-type]  # only outbound types are recorded
        created_at=_utc(record.created_at),
        expires_at=_utc(record.expires_at),
        recipients=recipients,
        events=events,
    )
