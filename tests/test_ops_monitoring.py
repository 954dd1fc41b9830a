"""deploy/monitoring and docs/operations.md name only metrics that bridge really exports, and
the docs list every metric each process exports; the ops OpenAPI document describes every view."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry

from bridge.adapters.metrics import AdapterMetrics
from bridge.broker._metrics import BrokerMetrics
from bridge.ops.alerts import AlertBook
from bridge.ops.config import Thresholds
from bridge.ops.http import OpsContext, build_app
from bridge.ops.metrics import OpsMetrics
from bridge.ops.openapi import openapi_document
from bridge.ops.tracker import Tracker
from bridge.ops.views import Backlog, OpsState

ROOT = Path(__file__).resolve().parent.parent
_METRIC = re.compile(r"\bbridge_(?:ops|broker|adapter)_[a-z_]+")
_SUFFIXES = ("_bucket", "_count", "_sum", "_created", "_total")


def _base(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _exported(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}


def _all_exported() -> set[str]:
    state = OpsState(Tracker(100), Thresholds(), ("a",), 0.0)
    state.submissions = Backlog(pending=0, ack_pending=0, redelivered=0, read_at=None)  # type: ignore[arg-type]
    names = _exported(OpsMetrics(state, AlertBook()).registry)
    names |= _exported(BrokerMetrics().registry)
    names |= _exported(AdapterMetrics("a").registry)
    return names


def test_the_docs_list_exactly_the_exported_metrics() -> None:
    documented = {_base(n) for n in _METRIC.findall((ROOT / "docs/operations.md").read_text())}
    assert documented == _all_exported()


def test_the_monitoring_files_use_only_exported_metrics() -> None:
    exported = _all_exported()
    folder = ROOT / "deploy/monitoring"
    dashboard = json.loads((folder / "grafana-dashboard.json").read_text())
    used: set[str] = set()
    for path in folder.iterdir():
        used |= {_base(n) for n in _METRIC.findall(path.read_text())}
    assert used <= exported, used - exported
    assert {"bridge_ops_stuck_messages", "bridge_ops_step_latency_seconds"} <= used
    assert all(panel["targets"] for panel in dashboard["panels"])


def test_the_ops_openapi_document_validates_and_describes_every_view() -> None:
    document = openapi_document()
    validate(document)
    app = build_app(
        OpsContext(
            verifier=None,  # type: ignore[arg-type]  # routes only: nothing is served
            state=OpsState(Tracker(100), Thresholds(), ("a",), 0.0),
            alerts=AlertBook(),
            clock=lambda: 0.0,
            ready=lambda: True,
            openapi=b"{}",
            closing=asyncio.Event(),
            metrics=None,
        )
    )
    views = {
        resource.canonical
        for resource in app.router.resources()
        if resource.canonical.startswith("/v1/")
    }
    assert views == set(document["paths"])
    assert {"AuditView", "Overview", "Problem"} <= set(document["components"]["schemas"])
