"""Where the policy's retention limits are enforced: the age limit of every stream.

The signed policy says how long things may be kept (per message type under `[types.*]`, the
records under `[retention]`); the store enforces it with its age limits and per-message TTLs.
This module is the one place that maps the one onto the other, so that provisioning sets, and
the broker at start-up and `bridge retention check` verify, the same ages.

    for limit in store_limits(policy.rules): limit.stream, limit.setting, limit.seconds
    settings = provision_settings(policy.rules, replicas=3)      # for bridge.nats.provision

What is kept per message (an inbox copy, a pending note) also carries its own TTL, which the
broker cuts from the same policy (`TypeLimits.inbox_wait`); the stream's age limit is the
backstop for the longest of them.
"""

from __future__ import annotations

from typing import Any, Final

from ..nats.provision import PENDING_GRACE, ProvisionSettings
from ..nats.retention import StoreLimit
from ..nats.subjects import (
    ATTACH_STREAM_PREFIX,
    AUDIT_STREAM,
    CONSENT_STREAM_PREFIX,
    INBOX_STREAM_PREFIX,
    PENDING_STREAM,
    REPORT_STREAM_PREFIX,
    STATUS_STREAM_PREFIX,
    SUBMIT_STREAM_PREFIX,
    WITHDRAWAL_STREAM_PREFIX,
)
from ._model import PolicyRules

__all__ = ["StoreLimit", "limit_for", "provision_settings", "store_limits"]

_LONGEST: Final = "the longest [types.*]"


def store_limits(rules: PolicyRules) -> tuple[StoreLimit, ...]:
    """Every stream bridge keeps data in, with the age limit the policy sets for it."""
    inbox = rules.longest("inbox_ttl")
    lifetime = rules.longest("max_lifetime")
    return (
        # A submission older than any message's lifetime can only be rejected as expired.
        StoreLimit(SUBMIT_STREAM_PREFIX, f"{_LONGEST} max_lifetime", lifetime),
        # Attachment chunks live as long as their message at most (each has its TTL too).
        StoreLimit(ATTACH_STREAM_PREFIX, f"{_LONGEST} max_lifetime", lifetime),
        StoreLimit(INBOX_STREAM_PREFIX, f"{_LONGEST} inbox_ttl", inbox),
        StoreLimit(PENDING_STREAM, f"{_LONGEST} inbox_ttl, plus a day", inbox + PENDING_GRACE),
        StoreLimit(STATUS_STREAM_PREFIX, "[retention] status", rules.retention.status),
        StoreLimit(REPORT_STREAM_PREFIX, "[retention] status", rules.retention.status),
        StoreLimit(CONSENT_STREAM_PREFIX, "[retention] consent", rules.retention.consent),
        StoreLimit(WITHDRAWAL_STREAM_PREFIX, "[retention] consent", rules.retention.consent),
        StoreLimit(AUDIT_STREAM, "[retention] audit", rules.retention.audit),
    )


def limit_for(limits: tuple[StoreLimit, ...], stream: str) -> StoreLimit | None:
    """The limit that covers `stream`, or None for a stream the policy says nothing about."""
    return next((limit for limit in limits if limit.covers(stream)), None)


def provision_settings(rules: PolicyRules, **changes: Any) -> ProvisionSettings:
    """Provisioning settings whose age limits are the policy's; `changes` set the rest."""
    return ProvisionSettings(
        submit_max_age=float(rules.longest("max_lifetime")),
        attach_max_age=float(rules.longest("max_lifetime")),
        inbox_max_age=float(rules.longest("inbox_ttl")),
        status_max_age=float(rules.retention.status),
        consent_max_age=float(rules.retention.consent),
        audit_max_age=float(rules.retention.audit),
        **changes,
    )
