"""The ops service's Prometheus metrics: counters as events arrive, gauges read at scrape time.

Gauges come from a collector over the live ops state, so a scrape always sees the current
view and nothing has to be kept in step by hand.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .alerts import AlertBook
from .audit import AGENCY_COUNTS
from .views import OpsState

__all__ = ["OpsMetrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)


class _StateCollector(Collector):
    def __init__(self, state: OpsState, alerts: AlertBook, clock: Callable[[], float]) -> None:
        self._state = state
        self._alerts = alerts
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        s, now = self._state, self._clock()
        legs = GaugeMetricFamily(
            "bridge_ops_messages",
            "Messages known to ops, per recipient, by current state, type and agencies",
            labels=("state", "type", "sender", "recipient"),
        )
        tally: Tally[tuple[str, str, str, str]] = Tally()
        stuck = near = 0
        for tracked, leg in s.legs():
            tally[(leg.state, tracked.type or "", tracked.sender, leg.recipient or "")] += 1
            stuck += s.stuck(leg, now)
            near += s.near_expiry(tracked, leg, now)
        for labels, n in sorted(tally.items()):
            legs.add_metric(labels, n)
        yield legs
        yield GaugeMetricFamily("bridge_ops_stuck_messages", "Messages stuck now", value=stuck)
        yield GaugeMetricFamily(
            "bridge_ops_near_expiry_messages", "Undelivered messages close to expiry", value=near
        )
        pending = GaugeMetricFamily(
            "bridge_ops_inbox_backlog",
            "Messages waiting in an agency's inbox (pending plus unacknowledged)",
            labels=("agency",),
        )
        redelivered = GaugeMetricFamily(
            "bridge_ops_inbox_redelivered",
            "Inbox messages delivered more than once and not yet acknowledged",
            labels=("agency",),
        )
        for agency, backlog in sorted(s.inboxes.items()):
            pending.add_metric((agency,), backlog.pending + backlog.ack_pending)
            redelivered.add_metric((agency,), backlog.redelivered)
        yield pending
        yield redelivered
        oldest = GaugeMetricFamily(
            "bridge_ops_inbox_oldest_waiting_seconds",
            "Age of the oldest message routed to an agency and not delivered",
            labels=("agency",),
        )
        for health in s.health(now).agencies:
            if health.oldest_waiting_seconds is not None:
                oldest.add_metric((health.agency,), health.oldest_waiting_seconds)
        yield oldest
        if s.submissions is not None:
            yield GaugeMetricFamily(
                "bridge_ops_submission_backlog",
                "Submissions waiting for a broker (pending plus unacknowledged)",
                value=s.submissions.pending + s.submissions.ack_pending,
            )
            yield GaugeMetricFamily(
                "bridge_ops_submission_redelivered",
                "Submissions delivered to a broker more than once, not yet acknowledged",
                value=s.submissions.redelivered,
            )
        up = GaugeMetricFamily(
            "bridge_ops_component_up",
            "1 if the component's heartbeat was heard within the silence threshold",
            labels=("component", "name"),
        )
        seen = GaugeMetricFamily(
            "bridge_ops_component_last_seen_timestamp_seconds",
            "When the component's last heartbeat arrived",
            labels=("component", "name"),
        )
        for agency in s.agencies:
            up.add_metric(("adapter", agency), 1.0 if s.adapter_up(agency, now) else 0.0)
            if agency in s.adapters:
                seen.add_metric(("adapter", agency), s.adapters[agency].last_seen)
        limit = s.thresholds.silent_after_seconds
        for name, beat in sorted(s.brokers.items()):
            up.add_metric(("broker", name), 1.0 if now - beat.last_seen <= limit else 0.0)
            seen.add_metric(("broker", name), beat.last_seen)
        yield up
        yield seen
        firing = GaugeMetricFamily(
            "bridge_ops_alerts_firing", "Alerts firing now, by rule", labels=("rule",)
        )
        rules = Tally(alert.rule for alert in self._alerts.firing.values())
        for rule, n in sorted(rules.items()):
            firing.add_metric((rule,), n)
        yield firing
        audit = s.audit
        kinds = CounterMetricFamily(
            "bridge_ops_audit_events",
            "Events in the audit trail, by kind (over the records the trail still holds)",
            labels=("kind",),
        )
        for kind, n in sorted(audit.totals.items()):
            kinds.add_metric((kind,), n)
        yield kinds
        per_agency = GaugeMetricFamily(
            "bridge_ops_audit_agency_events",
            "Audit events per agency: consents registered and withdrawn, consent refusals of "
            "messages it sent, deletions confirmed, keys destroyed",
            labels=("agency", "kind"),
        )
        for agency, book in sorted(audit.per_agency.items()):
            for kind in AGENCY_COUNTS:
                per_agency.add_metric((agency, kind), getattr(book, kind))
        yield per_agency
        yield GaugeMetricFamily(
            "bridge_ops_audit_last_sequence",
            "The last audit record ops has read",
            value=audit.last_sequence,
        )


class OpsMetrics:
    def __init__(
        self, state: OpsState, alerts: AlertBook, clock: Callable[[], float] = time.time
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.transitions = Counter(
            "bridge_ops_transitions",
            "Delivery steps seen, per recipient, by state, type and agencies",
            ("state", "type", "sender", "recipient"),
            registry=r,
        )
        self.rejections = Counter(
            "bridge_ops_rejections", "Rejections seen, by reason code", ("reason",), registry=r
        )
        self.latency = Histogram(
            "bridge_ops_step_latency_seconds",
            "Time from one delivery step to the next (routed: from submitted; delivered: from "
            "routed; receipted: from delivered; end_to_end: submitted to delivered)",
            ("step",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "bridge_ops_events",
            "Events folded, by kind (status, report, heartbeat, audit)",
            ("kind",),
            registry=r,
        )
        self.skipped = Counter(
            "bridge_ops_events_skipped",
            "Events skipped, by reason (malformed, unknown_source)",
            ("reason",),
            registry=r,
        )
        self.redeliveries = Counter(
            "bridge_ops_redeliveries",
            "Redeliveries of inbox messages reported by adapters",
            registry=r,
        )
        self.alerts_fired = Counter(
            "bridge_ops_alerts_fired", "Incidents that started, by rule", ("rule",), registry=r
        )
        self.webhook_attempts = Counter(
            "bridge_ops_alert_webhook_attempts", "Posts to the alert webhook", registry=r
        )
        self.webhook_failures = Counter(
            "bridge_ops_alert_webhook_failures", "Failed posts to the alert webhook", registry=r
        )
        r.register(_StateCollector(state, alerts, clock))

    def webhook_attempt(self, ok: bool) -> None:
        self.webhook_attempts.inc()
        if not ok:
            self.webhook_failures.inc()
