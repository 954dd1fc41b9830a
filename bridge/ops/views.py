"""What the dashboard and the JSON endpoints show, computed from the ops state on request.

Every view is a msgspec struct, so the OpenAPI document can describe it from the same source.
Metadata only: message and agency ids, type, state, reason codes, counts and times.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Final

import msgspec

from .audit import AuditBook
from .config import Thresholds
from .tracker import LATENCY_STEPS, Leg, Tracked, Tracker, utc_midnight

__all__ = [
    "MESSAGE_VIEWS",
    "STATES",
    "AgencyHealth",
    "Backlog",
    "BrokerHealth",
    "Health",
    "LatencyPoint",
    "LatencySeries",
    "LatencyView",
    "MessageList",
    "MessageRow",
    "OpsState",
    "Overview",
]

STATES: Final = (
    "submitted",
    "routed",
    "delivered",
    "receipted",
    "rejected",
    "expired",
    "withdrawn",
)
MESSAGE_VIEWS: Final = ("recent", "stuck", "rejected", "near_expiry")
LATENCY_SERIES: Final = (*LATENCY_STEPS, "end_to_end")


def _utc(seconds: float | None) -> datetime.datetime | None:
    return None if seconds is None else datetime.datetime.fromtimestamp(seconds, datetime.UTC)


class Overview(msgspec.Struct, kw_only=True):
    in_flight: int
    delivered_today: int
    rejected_today: int
    expired_today: int
    withdrawn_today: int
    stuck: int
    near_expiry: int
    alerts_firing: int
    messages_tracked: int
    rebuilt: bool  # the state was rebuilt from the stream and is being followed live
    generated_at: datetime.datetime


class MessageRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    message_id: str
    sender: str
    recipient: str | None
    type: str | None
    state: str
    age_seconds: float
    updated_at: datetime.datetime
    steps: dict[str, datetime.datetime]
    latencies: dict[str, float]
    attempts: int = 1
    reason: str | None = None
    stuck: bool = False
    near_expiry: bool = False
    expires_at: datetime.datetime | None = None


class MessageList(msgspec.Struct, kw_only=True):
    view: str
    total: int
    items: list[MessageRow]


class Backlog(msgspec.Struct, kw_only=True):
    pending: int  # not yet delivered to a consumer
    ack_pending: int  # delivered, not yet acknowledged
    redelivered: int  # delivered more than once, not yet acknowledged
    read_at: datetime.datetime


class AgencyHealth(msgspec.Struct, kw_only=True):
    agency: str
    adapter_up: bool
    adapter_last_seen: datetime.datetime | None
    inbox: Backlog | None
    oldest_waiting_seconds: float | None  # the oldest message routed to it and not delivered
    in_flight: int
    stuck: int


class BrokerHealth(msgspec.Struct, kw_only=True):
    name: str
    up: bool
    last_seen: datetime.datetime


class Health(msgspec.Struct, kw_only=True):
    agencies: list[AgencyHealth]
    brokers: list[BrokerHealth]
    submissions: Backlog | None


class LatencyPoint(msgspec.Struct, kw_only=True):
    at: datetime.datetime  # start of the bucket
    count: int
    mean_seconds: float
    max_seconds: float


class LatencySeries(msgspec.Struct, kw_only=True):
    step: str
    points: list[LatencyPoint]


class LatencyView(msgspec.Struct, kw_only=True):
    window_seconds: int
    bucket_seconds: int
    series: list[LatencySeries]


@dataclass
class Beat:
    last_seen: float
    interval: float


@dataclass
class OpsState:
    """The tracker, heartbeats and backlogs, and the views over them."""

    tracker: Tracker
    thresholds: Thresholds
    agencies: tuple[str, ...]
    started_at: float
    adapters: dict[str, Beat] = field(default_factory=dict)
    brokers: dict[str, Beat] = field(default_factory=dict)
    inboxes: dict[str, Backlog] = field(default_factory=dict)
    submissions: Backlog | None = None
    rebuilt: bool = False
    audit: AuditBook = field(init=False)

    def __post_init__(self) -> None:
        self.audit = AuditBook(self.agencies)

    # -- per leg ------------------------------------------------------------------------------

    def stuck(self, leg: Leg, now: float) -> bool:
        t = self.thresholds
        return leg.open and (
            now - leg.since > t.stuck_after_seconds or leg.attempts > t.redelivered_max
        )

    def near_expiry(self, tracked: Tracked, leg: Leg, now: float) -> bool:
        return (
            leg.open
            and tracked.expires_at is not None
            and now < tracked.expires_at <= now + self.thresholds.near_expiry_seconds
        )

    def legs(self) -> list[tuple[Tracked, Leg]]:
        return [(t, leg) for t in self.tracker.messages() for leg in t.legs.values()]

    def adapter_up(self, agency: str, now: float) -> bool:
        beat = self.adapters.get(agency)
        return beat is not None and now - beat.last_seen <= self.thresholds.silent_after_seconds

    # -- views --------------------------------------------------------------------------------

    def overview(self, now: float, alerts_firing: int) -> Overview:
        midnight = utc_midnight(now)
        counts = {"in_flight": 0, "delivered": 0, "rejected": 0, "expired": 0, "withdrawn": 0}
        stuck = near = 0
        for tracked, leg in self.legs():
            if leg.open:
                counts["in_flight"] += 1
                stuck += self.stuck(leg, now)
                near += self.near_expiry(tracked, leg, now)
            delivered_at = leg.steps.get("delivered", leg.steps.get("receipted"))
            if delivered_at is not None and delivered_at >= midnight:
                counts["delivered"] += 1
            for end in ("rejected", "expired", "withdrawn"):
                if leg.state == end and leg.steps[end] >= midnight:
                    counts[end] += 1
        return Overview(
            in_flight=counts["in_flight"],
            delivered_today=counts["delivered"],
            rejected_today=counts["rejected"],
            expired_today=counts["expired"],
            withdrawn_today=counts["withdrawn"],
            stuck=stuck,
            near_expiry=near,
            alerts_firing=alerts_firing,
            messages_tracked=len(self.tracker),
            rebuilt=self.rebuilt,
            generated_at=_utc(now) or datetime.datetime.now(datetime.UTC),
        )

    def row(self, tracked: Tracked, leg: Leg, now: float) -> MessageRow:
        latencies = {
            step: round(max(0.0, leg.steps[step] - leg.steps[since]), 3)
            for step, since in LATENCY_STEPS.items()
            if step in leg.steps and since in leg.steps
        }
        return MessageRow(
            message_id=tracked.message_id,
            sender=tracked.sender,
            recipient=leg.recipient,
            type=tracked.type,
            state=leg.state,
            age_seconds=round(max(0.0, now - leg.since), 3),
            updated_at=_utc(max(leg.steps.values())) or datetime.datetime.now(datetime.UTC),
            steps={step: _utc(at) for step, at in leg.steps.items()},  # type: ignore[misc]
            latencies=latencies,
            attempts=leg.attempts,
            reason=leg.reason,
            stuck=self.stuck(leg, now),
            near_expiry=self.near_expiry(tracked, leg, now),
            expires_at=_utc(tracked.expires_at),
        )

    def messages(
        self,
        now: float,
        *,
        view: str = "recent",
        state: str | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        message_type: str | None = None,
        limit: int = 100,
    ) -> MessageList:
        chosen: list[tuple[float, Tracked, Leg]] = []
        for tracked, leg in self.legs():
            if view == "stuck" and not self.stuck(leg, now):
                continue
            if view == "rejected" and leg.state != "rejected":
                continue
            if view == "near_expiry" and not self.near_expiry(tracked, leg, now):
                continue
            if state is not None and leg.state != state:
                continue
            if sender is not None and tracked.sender != sender:
                continue
            if recipient is not None and leg.recipient != recipient:
                continue
            if message_type is not None and tracked.type != message_type:
                continue
            chosen.append((max(leg.steps.values()), tracked, leg))
        chosen.sort(key=lambda item: item[0], reverse=True)
        rows = [self.row(tracked, leg, now) for _, tracked, leg in chosen[:limit]]
        return MessageList(view=view, total=len(chosen), items=rows)

    def health(self, now: float) -> Health:
        waiting: dict[str, float] = {}
        in_flight: dict[str, int] = {}
        stuck: dict[str, int] = {}
        for _, leg in self.legs():
            if not leg.open or leg.recipient is None:
                continue
            r = leg.recipient
            in_flight[r] = in_flight.get(r, 0) + 1
            stuck[r] = stuck.get(r, 0) + self.stuck(leg, now)
            if "routed" in leg.steps:
                waiting[r] = min(waiting.get(r, now), leg.steps["routed"])
        agencies = [
            AgencyHealth(
                agency=agency,
                adapter_up=self.adapter_up(agency, now),
                adapter_last_seen=_utc(self.adapters[agency].last_seen)
                if agency in self.adapters
                else None,
                inbox=self.inboxes.get(agency),
                oldest_waiting_seconds=round(now - waiting[agency], 3)
                if agency in waiting
                else None,
                in_flight=in_flight.get(agency, 0),
                stuck=stuck.get(agency, 0),
            )
            for agency in self.agencies
        ]
        brokers = [
            BrokerHealth(
                name=name,
                up=now - beat.last_seen <= self.thresholds.silent_after_seconds,
                last_seen=_utc(beat.last_seen) or datetime.datetime.now(datetime.UTC),
            )
            for name, beat in sorted(self.brokers.items())
        ]
        return Health(agencies=agencies, brokers=brokers, submissions=self.submissions)

    def latency(self, now: float, window: int, bucket: int) -> LatencyView:
        start = now - window
        first = int(start // bucket) * bucket
        sums: dict[tuple[str, int], list[float]] = {}
        for sample in self.tracker.samples:
            if sample.at < start or sample.at > now:
                continue
            slot = int(sample.at // bucket) * bucket
            values = sums.setdefault((sample.step, slot), [0.0, 0.0, 0.0])
            values[0] += 1
            values[1] += sample.seconds
            values[2] = max(values[2], sample.seconds)
        series = []
        for step in LATENCY_SERIES:
            points = [
                LatencyPoint(
                    at=_utc(slot) or datetime.datetime.now(datetime.UTC),
                    count=int(v[0]),
                    mean_seconds=round(v[1] / v[0], 3),
                    max_seconds=round(v[2], 3),
                )
                for (s, slot), v in sorted(sums.items(), key=lambda kv: kv[0][1])
                if s == step and slot >= first
            ]
            series.append(LatencySeries(step=step, points=points))
        return LatencyView(window_seconds=window, bucket_seconds=bucket, series=series)
