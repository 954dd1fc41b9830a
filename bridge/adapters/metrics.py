"""The adapter's Prometheus metrics, in a registry of its own (one per Adapter object).

Labels are agency ids, message types, states and reason codes: metadata that names no person.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["AdapterMetrics"]


class AdapterMetrics:
    def __init__(self, agency: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "bridge_adapter_messages",
            "Steps this adapter took with messages: accepted (sent), delivered, rejected "
            "(refused on receipt), receipted (a receipt came back), by type and agencies",
            ("state", "type", "sender", "recipient"),
            registry=r,
        )
        self.redeliveries = Counter(
            "bridge_adapter_redeliveries",
            "Inbox messages delivered to this adapter more than once",
            registry=r,
        )
        self.webhook_attempts = Counter(
            "bridge_adapter_webhook_attempts", "Webhook requests to the local system", registry=r
        )
        self.webhook_failures = Counter(
            "bridge_adapter_webhook_failures",
            "Webhook requests that failed (non-2xx answer, timeout, unreachable)",
            registry=r,
        )
        self.reports_failed = Counter(
            "bridge_adapter_reports_failed",
            "Reports for operations that could not be published",
            registry=r,
        )
        self.inbox_pending = Gauge(
            "bridge_adapter_inbox_pending",
            "Opened messages held for the local system to pull",
            registry=r,
        )
        self.up = Gauge(
            "bridge_adapter_up",
            "1 while the adapter serves and runs its loops",
            ("agency",),
            registry=r,
        )
        self.up.labels(agency).set(0)
