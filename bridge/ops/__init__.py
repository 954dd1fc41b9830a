"""Ops: delivery at a glance for operations staff, from metadata only.

`bridge ops -c FILE` follows the status stream (broker events and adapter reports), keeps each
message's delivery state per recipient, reads inbox and submission backlogs and heartbeats,
serves a dashboard and JSON views (token with scope `ops:read`), Prometheus metrics, and
posts alerts to a webhook. docs/operations.md describes it all.
"""

from __future__ import annotations

from .config import OpsConfig, load_ops_config
from .http import OPS_SCOPE
from .service import Ops

__all__ = ["OPS_SCOPE", "Ops", "OpsConfig", "load_ops_config"]
