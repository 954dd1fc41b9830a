"""The OpenAPI 3.1 document of the adapter's API, generated from the structs in `api`.

Schemas come from `msgspec.json.schema_components`, so what the document promises is what the
decoder enforces; only paths, parameters and security are written here.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .api import (
    Accepted,
    ConsentList,
    ConsentRequest,
    ConsentView,
    DeletionConfirmation,
    Health,
    InboxItem,
    InboxList,
    MessageStatus,
    Problem,
    SubmitRequest,
    UploadRequest,
    UploadStatus,
)
from .disclosures import DisclosureReport

__all__ = ["openapi_document"]

_REF: Final = "#/components/schemas/{name}"
_PROBLEM: Final = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
_MESSAGE_ID: Final = {
    "name": "message_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_CONSENT_ID: Final = {
    "name": "consent_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^c-[0-9a-f]{32}$"},
}


_UPLOAD_ID: Final = {
    "name": "upload_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def _problems(*statuses: int) -> dict[str, Any]:
    text = {
        400: "Malformed request",
        401: "Missing, invalid or expired bearer token",
        403: "The token lacks the scope",
        404: "No such item",
        409: "In conflict with the item's state (a wrong offset, an incomplete upload)",
        413: "Request body, an attachment or the attachments together too large",
        415: "Not application/json (or multipart/form-data with attachments)",
        416: "Not one satisfiable range of bytes",
        422: "A field is invalid; `field` and `pointer` name it",
        429: "This agency is at its quota (`quota.sender_full`, `quota.registry_full`); "
        "retry after `Retry-After` seconds",
        503: "NATS unavailable; retry after `Retry-After` seconds",
    }
    return {str(s): {"description": text[s], "content": _PROBLEM} for s in statuses}


def _op(summary: str, scope: str | None, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if scope is not None:
        op["security"] = [{"bearer": []}]
        op["description"] = f"Requires the scope `{scope}`."
        op["x-required-scope"] = scope
    else:
        op["security"] = []
    return op


def openapi_document(agency: str, version: str = "1") -> dict[str, Any]:
    _, schemas = msgspec.json.schema_components(
        [
            SubmitRequest,
            Accepted,
            UploadRequest,
            UploadStatus,
            MessageStatus,
            InboxList,
            InboxItem,
            ConsentRequest,
            ConsentView,
            ConsentList,
            DeletionConfirmation,
            DisclosureReport,
            Problem,
            Health,
        ],
        ref_template=_REF,
    )
    auth = _problems(401, 403)
    paths: dict[str, Any] = {
        "/v1/messages": {
            "post": _op(
                "Seal and send a message",
                "messages:send",
                {
                    "202": {
                        "description": "Stored in NATS; it will be routed",
                        "headers": {
                            "Location": {"schema": {"type": "string"}},
                        },
                        "content": _json("Accepted"),
                    },
                    **_problems(400, 413, 415, 422, 429, 503),
                    **auth,
                },
                requestBody={
                    "required": True,
                    "content": {
                        **_json("SubmitRequest"),
                        # docs/adapter.md, Attachments: the message, then one part per file.
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["message", "attachment"],
                                "properties": {
                                    "message": {"$ref": _REF.format(name="SubmitRequest")},
                                    "attachment": {
                                        "type": "array",
                                        "minItems": 1,
                                        "maxItems": 16,
                                        "items": {"type": "string", "format": "binary"},
                                    },
                                },
                            },
                            "encoding": {"message": {"contentType": "application/json"}},
                        },
                    },
                },
                parameters=[
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
            )
        },
        "/v1/uploads": {
            "post": _op(
                "Declare a file to upload in parts, then send by reference in a message",
                "messages:send",
                {
                    "201": {
                        "description": "Declared; send its parts with PUT",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": _json("UploadStatus"),
                    },
                    **_problems(400, 413, 415, 422, 503),
                    **auth,
                },
                requestBody={"required": True, "content": _json("UploadRequest")},
            )
        },
        "/v1/uploads/{upload_id}": {
            "get": _op(
                "How much of an upload arrived: resume a part at `received`",
                "messages:send",
                {
                    "200": {"description": "The progress", "content": _json("UploadStatus")},
                    **_problems(404),
                    **auth,
                },
                parameters=[_UPLOAD_ID],
            ),
            "put": _op(
                "Append one part at exactly the bytes received so far",
                "messages:send",
                {
                    "200": {
                        "description": "The part is stored; the bytes received so far",
                        "content": _json("UploadStatus"),
                    },
                    **_problems(400, 404, 409, 413, 503),
                    **auth,
                },
                parameters=[
                    _UPLOAD_ID,
                    {
                        "name": "offset",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                requestBody={
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
            ),
        },
        "/v1/messages/{message_id}": {
            "get": _op(
                "Status timeline of a sent message",
                "messages:read",
                {
                    "200": {"description": "The timeline", "content": _json("MessageStatus")},
                    **_problems(404, 503),
                    **auth,
                },
                parameters=[_MESSAGE_ID],
            )
        },
        "/v1/inbox": {
            "get": _op(
                "Messages waiting for acknowledgement (pull mode)",
                "inbox:read",
                {"200": {"description": "Pending items", "content": _json("InboxList")}, **auth},
            )
        },
        "/v1/inbox/{message_id}": {
            "get": _op(
                "One waiting message, opened",
                "inbox:read",
                {
                    "200": {"description": "The message", "content": _json("InboxItem")},
                    **_problems(404),
                    **auth,
                },
                parameters=[_MESSAGE_ID],
            )
        },
        "/v1/inbox/{message_id}/attachments/{index}": {
            "get": _op(
                "One attachment of a waiting message, every chunk checked (a byte range too)",
                "inbox:read",
                {
                    "200": {
                        "description": "The file, streamed; `Repr-Digest` is its SHA-256",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    "206": {
                        "description": "The requested range (`Content-Range`)",
                        "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **_problems(404, 416, 503),
                    **auth,
                },
                parameters=[
                    _MESSAGE_ID,
                    {
                        "name": "index",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 15},
                    },
                    {
                        "name": "Range",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 100},
                    },
                ],
            )
        },
        "/v1/inbox/{message_id}/ack": {
            "post": _op(
                "Acknowledge a message: the local system has it",
                "inbox:ack",
                {"204": {"description": "Acknowledged"}, **_problems(404, 503), **auth},
                parameters=[_MESSAGE_ID],
            )
        },
        "/v1/inbox/{message_id}/deleted": {
            "post": _op(
                "Confirm that the local system deleted what a consent-revoked notice named",
                "inbox:ack",
                {
                    "200": {
                        "description": "The signed deletion confirmation was sent to the issuer",
                        "content": _json("DeletionConfirmation"),
                    },
                    **_problems(404, 503),
                    **auth,
                },
                parameters=[_MESSAGE_ID],
            )
        },
        "/v1/consents": {
            "post": _op(
                "Register a consent this agency obtained (the local reference stays here)",
                "consents:write",
                {
                    "201": {
                        "description": "Signed and stored in the consent registry",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": _json("ConsentView"),
                    },
                    **_problems(400, 413, 415, 422, 429, 503),
                    **auth,
                },
                requestBody={"required": True, "content": _json("ConsentRequest")},
            ),
            "get": _op(
                "This agency's consents for one local reference",
                "consents:read",
                {
                    "200": {"description": "Oldest first", "content": _json("ConsentList")},
                    **_problems(422, 503),
                    **auth,
                },
                parameters=[
                    {
                        "name": "local_ref",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    }
                ],
            ),
        },
        "/v1/consents/{consent_id}": {
            "get": _op(
                "A consent: the signed record, its state, what followed a withdrawal",
                "consents:read",
                {
                    "200": {"description": "The consent", "content": _json("ConsentView")},
                    **_problems(404, 503),
                    **auth,
                },
                parameters=[_CONSENT_ID],
            ),
            "delete": _op(
                "Withdraw a consent (a signed withdrawal is stored; nothing is overwritten)",
                "consents:write",
                {
                    "200": {"description": "Withdrawn", "content": _json("ConsentView")},
                    **_problems(404, 503),
                    **auth,
                },
                parameters=[_CONSENT_ID],
            ),
        },
        "/v1/consents/{consent_id}/form": {
            "get": _op(
                "The printable release form (HTML with print styles)",
                "consents:read",
                {
                    "200": {"description": "The form", "content": {"text/html": {}}},
                    **_problems(404, 422, 503),
                    **auth,
                },
                parameters=[
                    _CONSENT_ID,
                    {
                        "name": "lang",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["de", "en"], "default": "de"},
                    },
                ],
            )
        },
        "/v1/disclosures": {
            "get": _op(
                "The client's disclosure report, built from the audit trail (JSON or HTML)",
                "consents:read",
                {
                    "200": {
                        "description": "Which agency received what, when, why, and how it ended",
                        "content": {**_json("DisclosureReport"), "text/html": {}},
                    },
                    **_problems(404, 422, 503),
                    **auth,
                },
                parameters=[
                    {
                        "name": "local_ref",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                    },
                    {
                        "name": "consent",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 64},
                    },
                    {
                        "name": "format",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["json", "html"], "default": "json"},
                    },
                    {
                        "name": "lang",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["de", "en"], "default": "de"},
                    },
                ],
            )
        },
        "/healthz": {
            "get": _op(
                "Liveness", None, {"200": {"description": "Alive", "content": _json("Health")}}
            )
        },
        "/readyz": {
            "get": _op(
                "Readiness: NATS connected and key directory loaded",
                None,
                {
                    "200": {"description": "Ready", "content": _json("Health")},
                    "503": {"description": "Not ready", "content": _json("Health")},
                },
            )
        },
        "/openapi.json": {
            "get": _op(
                "This document",
                "any",
                {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
            )
        },
    }
    paths["/openapi.json"]["get"]["description"] = "Requires a valid token, any scope."
    paths["/openapi.json"]["get"].pop("x-required-scope")
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": f"bridge adapter ({agency})",
            "version": version,
            "description": "The local HTTP API of a bridge adapter; see docs/adapter.md.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
    # A JSON round trip: schema defaults taken from the structs may be tuples.
    result: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(document))
    return result
