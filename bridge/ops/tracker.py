"""Each message's delivery state per recipient, folded from status events and reports.

A leg is one message on its way to one recipient. Its steps are `submitted` (the sender's
adapter accepted it), `routed`, `delivered` and `receipted`, each with the time it was first
seen; `rejected`, `expired` and `withdrawn` end it. Folding is idempotent and order-free: an
event seen twice, or a late one, changes nothing that is already known, so rebuilding from the
stream after a restart gives the same state as following it live. A state this table does not
know yet is refused by the event decoder before it gets here.

Metadata only: ids, agencies, type, states, reason codes and times.
"""

from __future__ import annotations

import collections
import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from ..wire import StatusEvent

__all__ = [
    "DONE_STEPS",
    "LATENCY_STEPS",
    "STEPS",
    "TERMINAL",
    "LatencySample",
    "Leg",
    "Tracked",
    "Tracker",
    "Transition",
    "utc_midnight",
]

STEPS: Final = ("submitted", "routed", "delivered", "receipted")
TERMINAL: Final = ("rejected", "expired", "withdrawn")
DONE_STEPS: Final = ("delivered", "receipted")
LATENCY_STEPS: Final = {
    # step -> the step it is measured from
    "routed": "submitted",
    "delivered": "routed",
    "receipted": "delivered",
}
_EVENT_STEP: Final = {"accepted": "submitted"}  # the event's state name -> the step's
_MAX_SAMPLES: Final = 20_000


def _step_of(state: str) -> str:
    return _EVENT_STEP.get(state, state)


@dataclass
class Leg:
    """One message to one recipient (`None` while the recipient is unknown)."""

    recipient: str | None
    steps: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    attempts: int = 1

    @property
    def state(self) -> str:
        delivered = any(step in self.steps for step in DONE_STEPS)
        for terminal in TERMINAL:
            # An expiry after delivery changes nothing: the message got there.
            if terminal in self.steps and not (terminal == "expired" and delivered):
                return terminal
        for step in reversed(STEPS):
            if step in self.steps:
                return step
        return "submitted"

    @property
    def delivered(self) -> bool:
        return any(step in self.steps for step in DONE_STEPS)

    @property
    def open(self) -> bool:
        """On its way: neither delivered nor ended."""
        return self.state in ("submitted", "routed")

    @property
    def since(self) -> float:
        return min(self.steps.values())


@dataclass
class Tracked:
    message_id: str
    sender: str
    type: str | None = None
    expires_at: float | None = None
    legs: dict[str | None, Leg] = field(default_factory=dict)
    rejected_all: tuple[float, str | None] | None = None  # the broker refused the whole message
    changed_at: float = 0.0

    @property
    def first_seen(self) -> float:
        return min((leg.since for leg in self.legs.values()), default=self.changed_at)


@dataclass(frozen=True, slots=True)
class Transition:
    message_id: str
    sender: str
    recipient: str | None
    type: str | None
    step: str
    at: float
    reason: str | None
    latency: float | None  # seconds since the step it is measured from, when both are known
    latency_step: str | None


@dataclass(frozen=True, slots=True)
class LatencySample:
    at: float
    step: str  # "routed", "delivered", "receipted" or "end_to_end" (submitted -> delivered)
    seconds: float


class Tracker:
    """Every known message, bounded: beyond `max_messages` the oldest finished ones go first."""

    def __init__(self, max_messages: int) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be positive")
        self._max = max_messages
        self._messages: collections.OrderedDict[str, Tracked] = collections.OrderedDict()
        self.samples: collections.deque[LatencySample] = collections.deque(maxlen=_MAX_SAMPLES)
        self.evicted = 0
        self.version = 0  # grows with every change, for live views

    def __repr__(self) -> str:
        return f"Tracker(messages={len(self._messages)}, version={self.version})"

    def __len__(self) -> int:
        return len(self._messages)

    def messages(self) -> Iterator[Tracked]:
        return iter(self._messages.values())

    def get(self, message_id: str) -> Tracked | None:
        return self._messages.get(message_id)

    # -- folding ------------------------------------------------------------------------------

    def apply(self, event: StatusEvent) -> list[Transition]:
        """Fold one event; return the steps it added (none if all were known)."""
        at = event.at.timestamp()
        tracked = self._messages.get(event.message_id)
        if tracked is None:
            tracked = Tracked(event.message_id, event.sender, changed_at=at)
            self._messages[event.message_id] = tracked
            self._evict()
        if event.message_type is not None and tracked.type is None:
            tracked.type = event.message_type.value
        if event.expires_at is not None:
            exp = event.expires_at.timestamp()
            tracked.expires_at = exp if tracked.expires_at is None else min(tracked.expires_at, exp)
        step = _step_of(event.state.value)
        if step not in STEPS and step not in TERMINAL:
            return []  # a warning (`expiring`): its expiry is noted above, the state stays
        if event.recipient is None:
            if step != "rejected":
                return []  # only a whole-message rejection has no recipient
            legs = list(tracked.legs.values()) or [self._leg(tracked, None)]
            if tracked.rejected_all is None:  # recipients learnt later start rejected
                tracked.rejected_all = (at, event.reason)
        else:
            legs = [self._leg(tracked, event.recipient)]
        changes: list[Transition] = []
        for leg in legs:
            if event.attempt is not None:
                if event.attempt > leg.attempts:
                    leg.attempts = event.attempt
                    self._touch(tracked, at)
                continue
            change = self._set(tracked, leg, step, at, event.reason)
            if change is not None:
                changes.append(change)
        return changes

    def _leg(self, tracked: Tracked, recipient: str | None) -> Leg:
        leg = tracked.legs.get(recipient)
        if leg is None:
            if recipient is not None and None in tracked.legs:
                # A whole-message rejection came first; now the recipient is known.
                leg = tracked.legs.pop(None)
                leg.recipient = recipient
            else:
                leg = Leg(recipient)
                if tracked.rejected_all is not None:
                    leg.steps["rejected"] = tracked.rejected_all[0]
                    leg.reason = tracked.rejected_all[1]
            tracked.legs[recipient] = leg
        return leg

    def _set(
        self, tracked: Tracked, leg: Leg, step: str, at: float, reason: str | None
    ) -> Transition | None:
        known = leg.steps.get(step)
        if known is not None and known <= at:
            return None
        leg.steps[step] = at
        if reason is not None and step in TERMINAL:
            leg.reason = reason
        self._touch(tracked, at)
        latency = latency_step = None
        since = LATENCY_STEPS.get(step)
        if since is not None and since in leg.steps:
            latency, latency_step = max(0.0, at - leg.steps[since]), step
            self.samples.append(LatencySample(at, step, latency))
        if step == "delivered" and "submitted" in leg.steps:
            self.samples.append(
                LatencySample(at, "end_to_end", max(0.0, at - leg.steps["submitted"]))
            )
        if known is not None:
            return None  # an earlier time for a step already counted: no new transition
        return Transition(
            tracked.message_id,
            tracked.sender,
            leg.recipient,
            tracked.type,
            step,
            at,
            leg.reason if step in TERMINAL else None,
            latency,
            latency_step,
        )

    def _touch(self, tracked: Tracked, at: float) -> None:
        tracked.changed_at = max(tracked.changed_at, at)
        self.version += 1

    def expire(self, now: float) -> list[Transition]:
        """Mark legs whose message is past its expiry and still undelivered as expired."""
        changes = []
        for tracked in self._messages.values():
            if tracked.expires_at is None or tracked.expires_at > now:
                continue
            for leg in tracked.legs.values():
                if leg.open:
                    change = self._set(
                        tracked, leg, "expired", tracked.expires_at, "retention.expired"
                    )
                    if change is not None:
                        changes.append(change)
        return changes

    def _evict(self) -> None:
        while len(self._messages) > self._max:
            victim = next(
                (
                    mid
                    for mid, t in self._messages.items()
                    if not any(leg.open for leg in t.legs.values())
                ),
                next(iter(self._messages)),
            )
            del self._messages[victim]
            self.evicted += 1


def utc_midnight(now: float) -> float:
    day = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp()
