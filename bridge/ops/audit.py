"""What ops takes from the audit trail: the facts the status stream does not carry.

The broker, the single audit writer, records every state change in `BRIDGE_AUDIT`. Ops reads it
read-only, from its first record on, with direct gets (as it reads the status stream), so a
restarted ops rebuilds the same book; its NATS identity may not subscribe to the trail's subject,
so it looks for new records every few seconds. From each event it keeps:

- counts by kind, over the records the trail still holds and for today (UTC);
- per agency: consents registered and withdrawn, deletions confirmed, keys destroyed
  (crypto-shredding), and messages it sent that were refused for their consent;
- the routing policy version and key directory serial in force (the latest recorded);
- the latest events that are not a message's usual course (rejections, expiries, withdrawals,
  consents, deletions, keys, policy and directory changes), for the dashboard.

The events that end a message's leg (`rejected`, `expired`, `withdrawn`) are folded into the
tracker as well: a second witness beside the broker's status events. Folding is idempotent, so
whichever arrives first counts and the other changes nothing.

Never the consent reference, purpose or data categories, never a key id: ops shows what happened
to deliveries, nothing about the client or the consent itself.
"""

from __future__ import annotations

import collections
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import msgspec
import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from .._cancel import pause, raise_if_cancelling
from ..audit import AuditEvent, AuditKind, AuditRecordInvalid, decode_record
from ..nats.backoff import Backoff
from ..nats.subjects import AUDIT_STREAM, audit_subject
from ..wire import Component, DeliveryState, StatusEvent
from .tracker import Tracker, Transition

if TYPE_CHECKING:
    from .metrics import OpsMetrics

__all__ = [
    "AGENCY_COUNTS",
    "CONSENT_REFUSAL_PREFIX",
    "AgencyAudit",
    "AuditBook",
    "AuditFollower",
    "AuditView",
    "leg_end",
]

log = logging.getLogger(__name__)

CONSENT_REFUSAL_PREFIX: Final = "consent."
_POLL_EVERY: Final = 2.0
_RECENT: Final = 200
# A message's usual course: counted, not listed among the recent events.
_COURSE: Final = frozenset(
    {
        AuditKind.SUBMITTED,
        AuditKind.ACCEPTED,
        AuditKind.ROUTED,
        AuditKind.DELIVERED,
        AuditKind.RECEIPTED,
    }
)
# Audit kinds that end a leg, as the status state the tracker folds.
_ENDS: Final = {
    AuditKind.REJECTED: DeliveryState.REJECTED,
    AuditKind.EXPIRED: DeliveryState.EXPIRED,
    AuditKind.WITHDRAWN: DeliveryState.WITHDRAWN,
}
# Per agency: which kinds count, and which field of the event names the agency.
_PER_AGENCY: Final = {
    AuditKind.CONSENT_REGISTERED: "consents_registered",
    AuditKind.CONSENT_WITHDRAWN: "consents_withdrawn",
    AuditKind.DELETION_CONFIRMED: "deletions_confirmed",
    AuditKind.KEY_DESTROYED: "keys_destroyed",
}
AGENCY_COUNTS: Final = (*_PER_AGENCY.values(), "consent_refusals")


class AuditCount(msgspec.Struct, kw_only=True):
    kind: str
    total: int  # over the records the trail holds
    today: int


class AgencyAudit(msgspec.Struct, kw_only=True):
    agency: str
    consents_registered: int = 0
    consents_withdrawn: int = 0
    deletions_confirmed: int = 0
    keys_destroyed: int = 0
    consent_refusals: int = 0  # messages it sent, refused for their consent


class AuditItem(msgspec.Struct, kw_only=True, omit_defaults=True):
    seq: int
    kind: str
    at: datetime.datetime
    message_id: str | None = None
    sender: str | None = None
    recipient: str | None = None
    type: str | None = None
    agency: str | None = None
    reason: str | None = None
    version: str | None = None  # policy hash or directory serial


class AuditView(msgspec.Struct, kw_only=True):
    rebuilt: bool  # the trail was read to its end and is being followed
    last_sequence: int  # the last record read
    events: int  # events read (checkpoints aside)
    checkpoints: int
    policy: str | None  # the routing policy version in force, as last recorded
    directory_serial: str | None
    counts: list[AuditCount]
    agencies: list[AgencyAudit]
    recent: list[AuditItem]


def _day(at: datetime.datetime) -> datetime.date:
    return at.astimezone(datetime.UTC).date()


@dataclass
class AuditBook:
    """What the audit trail says, folded; the view and the metrics read it."""

    agencies: tuple[str, ...]
    last_sequence: int = 0
    events: int = 0
    checkpoints: int = 0
    rebuilt: bool = False
    policy: str | None = None
    directory_serial: str | None = None
    totals: collections.Counter[str] = field(default_factory=collections.Counter)
    by_day: dict[datetime.date, collections.Counter[str]] = field(default_factory=dict)
    per_agency: dict[str, AgencyAudit] = field(default_factory=dict)
    recent: collections.deque[AuditItem] = field(
        default_factory=lambda: collections.deque(maxlen=_RECENT)
    )
    version: int = 0  # grows with every change, for live views

    def __repr__(self) -> str:
        return f"AuditBook(last_sequence={self.last_sequence}, events={self.events})"

    def known(self, event: AuditEvent) -> bool:
        """Whether every agency the event names is one of the federation's."""
        named = (event.sender, event.recipient, event.agency)
        return all(a is None or a in self.agencies for a in named)

    def add(self, seq: int, event: AuditEvent) -> None:
        kind = event.kind.value
        self.events += 1
        self.version += 1
        self.totals[kind] += 1
        self.by_day.setdefault(_day(event.at), collections.Counter())[kind] += 1
        if event.kind is AuditKind.POLICY_CHANGED:
            self.policy = event.version
        elif event.kind is AuditKind.DIRECTORY_CHANGED:
            self.directory_serial = event.version
        counter = _PER_AGENCY.get(event.kind)
        if counter is not None and event.agency is not None:
            book = self._agency(event.agency)
            setattr(book, counter, getattr(book, counter) + 1)
        if (
            event.kind is AuditKind.REJECTED
            and event.recipient is None
            and event.sender is not None
            and (event.reason or "").startswith(CONSENT_REFUSAL_PREFIX)
        ):
            self._agency(event.sender).consent_refusals += 1
        if event.kind not in _COURSE:
            self.recent.append(
                AuditItem(
                    seq=seq,
                    kind=kind,
                    at=event.at,
                    message_id=event.message_id,
                    sender=event.sender,
                    recipient=event.recipient,
                    type=event.message_type.value if event.message_type else None,
                    agency=event.agency,
                    reason=event.reason,
                    version=event.version,
                )
            )

    def _agency(self, agency: str) -> AgencyAudit:
        book = self.per_agency.get(agency)
        if book is None:
            book = self.per_agency[agency] = AgencyAudit(agency=agency)
        return book

    def view(self, now: float, limit: int = 50) -> AuditView:
        day = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
        today = self.by_day.get(day) or collections.Counter()
        return AuditView(
            rebuilt=self.rebuilt,
            last_sequence=self.last_sequence,
            events=self.events,
            checkpoints=self.checkpoints,
            policy=self.policy,
            directory_serial=self.directory_serial,
            counts=[
                AuditCount(kind=kind.value, total=self.totals[kind], today=today.get(kind, 0))
                for kind in AuditKind
            ],
            agencies=[self.per_agency.get(a) or AgencyAudit(agency=a) for a in self.agencies],
            recent=list(reversed(self.recent))[:limit],
        )


def leg_end(event: AuditEvent) -> StatusEvent | None:
    """The status event the tracker folds for an audit event that ends a leg, if it is one."""
    state = _ENDS.get(event.kind)
    if state is None or event.message_id is None or event.sender is None:
        return None
    return StatusEvent(
        message_id=event.message_id,
        sender=event.sender,
        recipient=event.recipient,
        message_type=event.message_type,
        state=state,
        reason=event.reason,
        at=event.at,
        component=Component.BROKER,
    )


class AuditFollower:
    """Reads the audit trail from its first record on and follows it by polling."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        book: AuditBook,
        tracker: Tracker,
        metrics: OpsMetrics,
        on_transition: Callable[[Transition], None],
        poll_every: float = _POLL_EVERY,
    ) -> None:
        self._js = js
        self._book = book
        self._tracker = tracker
        self._metrics = metrics
        self._on_transition = on_transition
        self._poll_every = poll_every
        self.next_seq = 1

    def __repr__(self) -> str:
        return f"AuditFollower(next_seq={self.next_seq}, rebuilt={self._book.rebuilt})"

    async def follow(self) -> None:
        backoff = Backoff()  # while NATS is away: growing pauses, not one read a second
        while True:
            try:
                await self._drain()
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                log.warning("audit trail not readable right now (%s)", type(exc).__name__)
                await pause(backoff.next())
                continue
            backoff.reset()
            if not self._book.rebuilt:
                self._book.rebuilt = True
                log.info(
                    "ops read the audit trail: %d events, next sequence %d",
                    self._book.events,
                    self.next_seq,
                )
            await pause(self._poll_every)

    async def _drain(self) -> None:
        while True:
            try:
                raw = await self._js.get_msg(
                    AUDIT_STREAM, seq=self.next_seq, subject=audit_subject(), next=True, direct=True
                )
            except nats.js.errors.NotFoundError:
                return
            finally:
                raise_if_cancelling()
            if raw.seq is None or raw.seq < self.next_seq:
                raise nats.errors.Error("direct get answered out of order")
            self.next_seq = raw.seq + 1
            self.fold(raw.seq, raw.data or b"")

    def fold(self, seq: int, data: bytes) -> None:
        """Fold one record; skip (and count) a malformed record or an event naming an agency
        outside the federation."""
        self._book.last_sequence = max(self._book.last_sequence, seq)
        try:
            record = decode_record(data)
        except AuditRecordInvalid:
            self._metrics.skipped.labels("malformed").inc()
            return
        events = record.all_events  # one event, or the events of one step
        if not events:
            self._book.checkpoints += 1
            return
        for event in events:
            if not self._book.known(event):
                self._metrics.skipped.labels("unknown_source").inc()
                continue
            self._metrics.events.labels("audit").inc()
            self._book.add(seq, event)
            end = leg_end(event)
            if end is not None:
                for transition in self._tracker.apply(end):
                    self._on_transition(transition)
