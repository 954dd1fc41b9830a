"""The OpenAPI 3.1 document of the ops service, generated from the view structs.

Every view the dashboard shows has its JSON endpoint here; schemas come from
`msgspec.json.schema_components`, so the document describes exactly what is served.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from ..http.problems import Problem
from ..ids import MESSAGE_TYPES
from .audit import AuditView
from .http import OPS_SCOPE, AlertList
from .views import MESSAGE_VIEWS, STATES, Health, LatencyView, MessageList, Overview

__all__ = ["openapi_document"]

_REF: Final = "#/components/schemas/{name}"
_PROBLEM: Final = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_AGENCY: Final = {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _int(low: int, high: int, default: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high, "default": default}


def _op(summary: str, ok: dict[str, Any], params: list[dict[str, Any]] | None = None) -> Any:
    responses = {
        "200": ok,
        "401": {"description": "Missing, invalid or expired bearer token", "content": _PROBLEM},
        "403": {"description": f"The token lacks the scope `{OPS_SCOPE}`", "content": _PROBLEM},
    }
    if params:
        responses["400"] = {
            "description": "A query parameter is unknown, repeated or out of range; `field` "
            "names it",
            "content": _PROBLEM,
        }
    return {
        "get": {
            "summary": summary,
            "description": f"Requires the scope `{OPS_SCOPE}` (the ops role). Read-only.",
            "security": [{"bearer": []}],
            "x-required-scope": OPS_SCOPE,
            "parameters": params or [],
            "responses": responses,
        }
    }


def openapi_document(version: str = "1") -> dict[str, Any]:
    _, schemas = msgspec.json.schema_components(
        [Overview, MessageList, Health, LatencyView, AlertList, AuditView, Problem],
        ref_template=_REF,
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bridge ops",
            "version": version,
            "description": "Delivery monitoring for operations: metadata only (ids, agencies, "
            "types, states, reason codes, times), never content or client data.",
        },
        "paths": {
            "/v1/overview": _op(
                "The overview tiles", {"description": "Counts", "content": _json("Overview")}
            ),
            "/v1/messages": _op(
                "Recent, stuck, rejected or near-expiry messages, one row per recipient",
                {"description": "Rows, newest change first", "content": _json("MessageList")},
                [
                    _param(
                        "view", {"enum": list(MESSAGE_VIEWS), "default": "recent"}, "Which list"
                    ),
                    _param("state", {"enum": list(STATES)}, "Only rows in this state"),
                    _param("sender", _AGENCY, "Only messages from this agency"),
                    _param("recipient", _AGENCY, "Only rows to this agency"),
                    _param("type", {"enum": list(MESSAGE_TYPES)}, "Only this message type"),
                    _param("limit", _int(1, 500, 100), "At most this many rows"),
                ],
            ),
            "/v1/health": _op(
                "Per-agency health (adapter up, inbox backlog, oldest waiting) and brokers",
                {"description": "Health", "content": _json("Health")},
            ),
            "/v1/latency": _op(
                "Delivery latency over time, per step, in buckets",
                {"description": "Series", "content": _json("LatencyView")},
                [
                    _param("window_seconds", _int(60, 7 * 86400, 3600), "How far back"),
                    _param(
                        "bucket_seconds",
                        _int(1, 86400, 60),
                        "Bucket width; at least window_seconds / 1000",
                    ),
                ],
            ),
            "/v1/alerts": _op(
                "Firing alerts, then recently resolved ones",
                {"description": "Alerts", "content": _json("AlertList")},
                [_param("limit", _int(1, 500, 100), "At most this many")],
            ),
            "/v1/audit": _op(
                "What the audit trail recorded beyond the usual course: counts by kind, per "
                "agency (consents, refusals for consent, deletions, destroyed keys), the policy "
                "and directory in force, and the latest notable events",
                {"description": "The audit book", "content": _json("AuditView")},
                [_param("limit", _int(1, 200, 50), "At most this many recent events")],
            ),
            "/v1/events": _op(
                "Live updates as server-sent events: `update` with the overview whenever the "
                "state changed",
                {"description": "An event stream", "content": {"text/event-stream": {}}},
            ),
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
