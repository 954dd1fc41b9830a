"""RFC 9457 problem details: the one shape every error of bridge's HTTP APIs takes.

Handlers raise `ApiProblem` (or a `BridgeError` the middleware in `bridge.adapters.http`
translates); nothing else decides status codes. A problem names the offending field by JSON path
and JSON pointer but never quotes a value from the request: requests are full of personal data,
and problems end up in the callers' logs. The adapter, ops and every health and metrics port
answer with it.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

import msgspec
from aiohttp import web
from msgspec import Meta

from ..errors import BridgeError
from ..wire import REASON_CODE_PATTERN

__all__ = [
    "PROBLEM_JSON",
    "ApiProblem",
    "Problem",
    "http_exception_problem",
    "json_path_to_pointer",
    "problem_response",
]

PROBLEM_JSON: Final = "application/problem+json"
_TYPE_BASE: Final = "https://bridge.example/problems/"
_SEGMENT = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[([0-9]+)\]")

ReasonCode = Annotated[str, Meta(min_length=1, max_length=64, pattern=REASON_CODE_PATTERN)]


class Problem(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True
):
    """RFC 9457 problem details; `code` is bridge's reason code, `field` and `pointer` name the
    offending request field as JSON path and JSON pointer (RFC 6901)."""

    type: str
    title: str
    status: int
    detail: str
    code: ReasonCode
    instance: str | None = None
    field: str | None = None
    pointer: str | None = None


_TITLES: Final = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}

_encoder: Final = msgspec.json.Encoder()
_HTTP_REASONS: Final = {404: "http.not_found", 405: "http.method_not_allowed"}


class ApiProblem(BridgeError):
    """An HTTP error answer: status, a reason code, a safe detail and optionally a field path.

    `field` is a JSON path (`$.body.client.family_name`); it must come from a schema, never from
    the request's own keys.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        reason: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail, reason=reason)
        self.status = status
        self.detail = detail
        self.field = field
        self.headers = dict(headers or {})

    @classmethod
    def from_error(cls, status: int, exc: BridgeError, *, field: str | None = None) -> ApiProblem:
        return cls(status, str(exc), reason=exc.reason, field=field)


def http_exception_problem(exc: web.HTTPException) -> ApiProblem:
    """aiohttp's own 4xx (no such route, a method the route lacks) as a problem.

    The detail is aiohttp's reason phrase, never the request; a 405 keeps its `Allow` header.
    """
    reason = _HTTP_REASONS.get(exc.status, f"http.status_{exc.status}")
    kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
    return ApiProblem(exc.status, exc.reason, reason=reason, headers=kept)


def json_path_to_pointer(path: str) -> str | None:
    """`$.a.b[2]` -> `/a/b/2` (RFC 6901); None for anything that is not such a path."""
    if not path.startswith("$"):
        return None
    rest, parts, pos = path[1:], [], 0
    while pos < len(rest):
        m = _SEGMENT.match(rest, pos)
        if m is None:
            return None
        parts.append(m[1] if m[1] is not None else m[2])
        pos = m.end()
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def problem_response(problem: ApiProblem, instance: str | None = None) -> web.Response:
    """The `application/problem+json` response for `problem`."""
    body = Problem(
        type=_TYPE_BASE + problem.reason,
        title=_TITLES.get(problem.status, "Error"),
        status=problem.status,
        detail=problem.detail,
        code=problem.reason,
        instance=instance,
        field=problem.field,
        pointer=json_path_to_pointer(problem.field) if problem.field else None,
    )
    headers = dict(problem.headers)
    if problem.status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="bridge"')
    return web.Response(
        status=problem.status,
        body=_encoder.encode(body),
        content_type=PROBLEM_JSON,
        headers=headers,
    )
