"""What every bridge process tells its operators: metrics, health, heartbeats and log lines.

Metadata only, everywhere: message ids, agency ids, types, states and reason codes, never
content, consent details or anything a caller sent. docs/operations.md lists every metric.
"""

from __future__ import annotations

from .health import HealthServer, add_health_routes, metrics_response
from .heartbeat import HEARTBEAT_INTERVAL, Heartbeat, beat_forever, decode_heartbeat
from .logs import LOG_FORMATS, configure_logging

__all__ = [
    "HEARTBEAT_INTERVAL",
    "LOG_FORMATS",
    "HealthServer",
    "Heartbeat",
    "add_health_routes",
    "beat_forever",
    "configure_logging",
    "decode_heartbeat",
    "metrics_response",
]
