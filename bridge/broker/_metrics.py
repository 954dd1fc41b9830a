"""The broker's Prometheus metrics, in a registry of its own (one per Broker object).

Labels are agency ids, message types and reason codes: metadata that names no person.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["BrokerMetrics"]

_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class BrokerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "bridge_broker_messages",
            "Submissions decided, by outcome (routed per recipient, rejected), type and agencies",
            ("state", "type", "sender", "recipient"),
            registry=r,
        )
        self.rejections = Counter(
            "bridge_broker_rejections",
            "Submissions rejected, by reason code",
            ("reason",),
            registry=r,
        )
        self.redeliveries = Counter(
            "bridge_broker_redeliveries",
            "Deliveries of a submission that the broker had been given before",
            registry=r,
        )
        self.deferred = Counter(
            "bridge_broker_deferred",
            "Submissions handed back for a retry after a transport error",
            registry=r,
        )
        self.over_budget = Counter(
            "bridge_broker_over_rejection_budget",
            "Submissions handed back because their sender has caused its rejections for now",
            ("sender",),
            registry=r,
        )
        self.recipient_full = Counter(
            "bridge_broker_recipient_full",
            "Inbox copies refused because the recipient's inbox is at its quota (messages or "
            "bytes); the submission waits in its sender's stream",
            ("recipient", "quota"),
            registry=r,
        )
        self.route_latency = Histogram(
            "bridge_broker_route_latency_seconds",
            "From the envelope's issue time to routed into every inbox",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.submission_backlog = Gauge(
            "bridge_broker_submission_backlog",
            "Submissions waiting for a broker (consumer pending plus unacknowledged)",
            registry=r,
        )
        self.submission_redelivered = Gauge(
            "bridge_broker_submission_redelivered",
            "Submissions delivered to a broker more than once and not yet acknowledged",
            registry=r,
        )
        self.up = Gauge("bridge_broker_up", "1 while the broker consumes submissions", registry=r)
