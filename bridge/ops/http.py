"""The ops service's HTTP API and dashboard: JSON views, live updates, static files.

Every `/v1/...` view and `/openapi.json` need a bearer token with the `ops:read` scope (the ops
role); the API is read-only. Query parameters are checked one by one: an unknown, repeated or
out-of-range parameter is a 400 problem naming the field, never quoting the value. `/v1/events`
is a server-sent event stream (`update` whenever the state changed, at most twice a second); the
dashboard reads it with `fetch`, so the token travels in a header, never in a URL. The static
files (`/`, `/static/...`) hold no data and need no token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Final

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry

from ..http.auth import AuthenticationFailed, InsufficientScope, TokenVerifier
from ..http.guard import guard_middleware
from ..http.problems import ApiProblem, http_exception_problem, problem_response
from ..ids import AGENCY_ID_PATTERN, MESSAGE_TYPES
from ..telemetry import add_health_routes
from .alerts import Alert, AlertBook
from .views import MESSAGE_VIEWS, STATES, OpsState

__all__ = ["OPS_SCOPE", "OpsContext", "build_app"]

log = logging.getLogger(__name__)

OPS_SCOPE: Final = "ops:read"
MAX_STREAMS: Final = 64
_LIVE_EVERY: Final = 0.5
_KEEPALIVE: Final = 15.0
_AGENCY_RE: Final = re.compile(AGENCY_ID_PATTERN)
_INT_RE: Final = re.compile(r"^[0-9]{1,9}$")
_encoder: Final = msgspec.json.Encoder()
_STATIC: Final = {
    "/": ("index.html", "text/html"),
    "/static/app.js": ("app.js", "text/javascript"),
    "/static/i18n.js": ("i18n.js", "text/javascript"),
    "/static/style.css": ("style.css", "text/css"),
}


class AlertList(msgspec.Struct, kw_only=True):
    firing: int
    items: list[Alert]


@dataclass(frozen=True)
class OpsContext:
    verifier: TokenVerifier
    state: OpsState
    alerts: AlertBook
    clock: Callable[[], float]
    ready: Callable[[], bool]
    openapi: bytes
    closing: asyncio.Event
    metrics: CollectorRegistry | None


CONTEXT: Final = web.AppKey("bridge.ops", OpsContext)
_STREAMS: Final = web.AppKey("bridge.ops.streams", set[web.StreamResponse])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(value: object) -> web.Response:
    response = web.Response(body=_encoder.encode(value), content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    # No `instance`: it would echo the request path, and problems never quote a request.
    try:
        return await handler(request)
    except ApiProblem as problem:
        return problem_response(problem)
    except AuthenticationFailed as exc:
        return problem_response(ApiProblem.from_error(401, exc))
    except InsufficientScope as exc:
        return problem_response(ApiProblem.from_error(403, exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(http_exception_problem(exc))
    except Exception as exc:
        log.error("unhandled %s in %s", type(exc).__name__, request.method)
        return problem_response(ApiProblem(500, "internal error", reason="internal"))


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'",
    )
    return response


def _ctx(request: web.Request) -> OpsContext:
    return request.app[CONTEXT]


async def _authorise(request: web.Request) -> None:
    claims = await _ctx(request).verifier.verify(request.headers.get("Authorization"))
    claims.require(OPS_SCOPE)


# -- query parameters --------------------------------------------------------------------------


class _Query:
    """The request's query parameters, checked against the ones an endpoint knows."""

    def __init__(self, request: web.Request, known: tuple[str, ...]) -> None:
        query = request.query
        for key in query:
            if key not in known:
                raise ApiProblem(
                    400,
                    f"unknown query parameter; this endpoint takes: {', '.join(known) or 'none'}",
                    reason="query.unknown",
                )
            if len(query.getall(key)) > 1:
                raise ApiProblem(
                    400, f"{key} is given more than once", reason="query.repeated", field=f"$.{key}"
                )
        self._query = query

    def _bad(self, name: str, wanted: str) -> ApiProblem:
        return ApiProblem(
            400, f"{name} must be {wanted}", reason="query.invalid", field=f"$.{name}"
        )

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self._query.get(name)
        if raw is None:
            return default
        if not _INT_RE.fullmatch(raw) or not low <= int(raw) <= high:
            raise self._bad(name, f"a whole number from {low} to {high}")
        return int(raw)

    def choice(self, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
        raw = self._query.get(name)
        if raw is None:
            return default
        if raw not in choices:
            raise self._bad(name, f"one of {', '.join(choices)}")
        return raw

    def agency(self, name: str) -> str | None:
        raw = self._query.get(name)
        if raw is None:
            return None
        if not _AGENCY_RE.fullmatch(raw):
            raise self._bad(name, "an agency id")
        return raw


# -- views -------------------------------------------------------------------------------------


async def _overview(request: web.Request) -> web.StreamResponse:
    await _authorise(request)
    _Query(request, ())
    ctx = _ctx(request)
    return _json(ctx.state.overview(ctx.clock(), len(ctx.alerts.firing)))


async def _messages(request: web.Request) -> web.StreamResponse:
    await _authorise(request)
    q = _Query(request, ("view", "state", "sender", "recipient", "type", "limit"))
    ctx = _ctx(request)
    return _json(
        ctx.state.messages(
            ctx.clock(),
            view=q.choice("view", MESSAGE_VIEWS, "recent") or "recent",
            state=q.choice("state", STATES, None),
            sender=q.agency("sender"),
            recipient=q.agency("recipient"),
            message_type=q.choice("type", tuple(sorted(MESSAGE_TYPES)), None),
            limit=q.integer("limit", 100, 1, 500),
        )
    )


async def _health(request: web.Request) -> web.StreamResponse:
    await _authorise(request)
    _Query(request, ())
    ctx = _ctx(request)
    return _json(ctx.state.health(ctx.clock()))


async def _latency(request: web.Request) -> web.StreamResponse:
    await _authorise(request)
    q = _Query(request, ("window_seconds", "bucket_seconds"))
    window = q.integer("window_seconds", 3600, 60, 7 * 86400)
    bucket = q.integer("bucket_seconds", 60, 1, 86400)
    if window // bucket > 1000:
        raise ApiProblem(
            400,
            "bucket_seconds must be at least window_seconds / 1000",
            reason="query.invalid",
            field="$.bucket_seconds",
        )
    ctx = _ctx(request)
    return _json(ctx.state.latency(ctx.clock(), window, bucket))


async def _alerts(request: web.Request) -> web.StreamResponse:
    await _authorise(request)
    q = _Query(request, ("limit",))
    limit = q.integer("limit", 100, 1, 500)
    book = _ctx(request).alerts
    return _json(AlertList(firing=len(book.firing), items=book.all()[:limit]))


async def _audit(request: web.Request) -> web.StreamResponse:
    await _authorise(request)
    q = _Query(request, ("limit",))
    limit = q.integer("limit", 50, 1, 200)
    ctx = _ctx(request)
    return _json(ctx.state.audit.view(ctx.clock(), limit))


async def _events(request: web.Request) -> web.StreamResponse:
    await _authorise(request)
    _Query(request, ())
    ctx = _ctx(request)
    streams = request.app[_STREAMS]
    if len(streams) >= MAX_STREAMS:
        raise ApiProblem(
            503,
            "too many live views open; retry later",
            reason="events.busy",
            headers={"Retry-After": "10"},
        )
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    streams.add(response)
    last: tuple[int, int, int, int] | None = None
    quiet = 0.0
    try:
        while not ctx.closing.is_set():
            state = ctx.state
            version = (
                state.tracker.version,
                ctx.alerts.version,
                state.audit.version,
                _backlog_version(state),
            )
            if version != last:
                last = version
                overview = ctx.state.overview(ctx.clock(), len(ctx.alerts.firing))
                await response.write(b"event: update\ndata: " + _encoder.encode(overview) + b"\n\n")
                quiet = 0.0
            elif quiet >= _KEEPALIVE:
                await response.write(b": keep-alive\n\n")
                quiet = 0.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_LIVE_EVERY):
                    await ctx.closing.wait()
            quiet += _LIVE_EVERY
    except (ConnectionResetError, RuntimeError):
        pass  # the browser went away
    finally:
        streams.discard(response)
    return response


def _backlog_version(state: OpsState) -> int:
    """Changes when a backlog or a component's liveness changes (not with every read)."""
    parts = [(a, b.pending, b.ack_pending, b.redelivered) for a, b in sorted(state.inboxes.items())]
    parts.append(("up", *sorted(state.adapters)))  # type: ignore[arg-type]
    subs = state.submissions
    parts.append(("sub", subs.pending, subs.ack_pending, subs.redelivered) if subs else ("sub",))  # type: ignore[arg-type]
    return hash(tuple(parts))


async def _openapi(request: web.Request) -> web.StreamResponse:
    await _authorise(request)
    return web.Response(body=_ctx(request).openapi, content_type="application/json")


def _static(name: str, content_type: str) -> Handler:
    body = resources.files(__package__).joinpath("static", name).read_bytes()

    async def serve(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=body, content_type=content_type, charset="utf-8")
        response.headers["Cache-Control"] = "no-cache"
        return response

    return serve


def build_app(context: OpsContext) -> web.Application:
    app = web.Application(
        middlewares=[_headers, _problems, guard_middleware], client_max_size=64 * 1024
    )
    app[CONTEXT] = context
    app[_STREAMS] = set()
    app.router.add_get("/v1/overview", _overview)
    app.router.add_get("/v1/messages", _messages)
    app.router.add_get("/v1/health", _health)
    app.router.add_get("/v1/latency", _latency)
    app.router.add_get("/v1/alerts", _alerts)
    app.router.add_get("/v1/audit", _audit)
    app.router.add_get("/v1/events", _events)
    app.router.add_get("/openapi.json", _openapi)
    for path, (name, content_type) in _STATIC.items():
        app.router.add_get(path, _static(name, content_type))
    add_health_routes(app, ready=context.ready, registry=context.metrics)
    return app
