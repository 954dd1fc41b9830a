"""The adapter's aiohttp application: routes, bearer-token checks and problem answers.

Handlers are thin: they check the token's scope, read bounded input, and call `Outbound`,
`Store` or `PullInbox`. Every error leaves as `application/problem+json` through one
middleware; an unexpected exception becomes an opaque 500 and is logged by type only, since
its message might quote a request.
"""

from __future__ import annotations

import base64
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry

from ..errors import BridgeError, ConfigError, ProtocolError, TransportError
from ..federation.directory import Directory
from ..http.auth import AuthenticationFailed, Claims, InsufficientScope, TokenVerifier
from ..http.guard import guard_middleware
from ..http.problems import ApiProblem, http_exception_problem, problem_response
from ..ids import check_message_id
from ..telemetry import metrics_response
from .api import Accepted, DeletionConfirmation, Health, InboxList, UploadRequest, UploadStatus
from .chunks import ChunkStore
from .consents import Consents
from .disclosures import Disclosures, render_report
from .files import byte_range, plaintext
from .form import LANGUAGES, render_form
from .outbound import Outbound
from .pull import PullInbox
from .revocation import Revocations
from .spool import Spool
from .store import Store
from .submission import decode_request
from .timeline import message_status
from .upload import read_message_part

__all__ = ["CONTEXT", "ApiContext", "build_app"]

log = logging.getLogger(__name__)

_encoder: Final = msgspec.json.Encoder()
_READ_CHUNK: Final = 64 * 1024
_RETRY_AFTER: Final = "5"


@dataclass(frozen=True)
class ApiContext:
    verifier: TokenVerifier
    outbound: Outbound
    store: Store
    inbox: PullInbox | None
    ready: Callable[[], bool]
    max_body_bytes: int
    openapi: bytes
    clock: Callable[[], float]
    consents: Consents
    revocations: Revocations
    directory: Callable[[], Directory]
    disclosures: Disclosures | None = None
    chunks: ChunkStore | None = None
    spool: Spool | None = None
    metrics: CollectorRegistry | None = None  # served at /metrics unless on a port of its own


_upload_decoder: Final = msgspec.json.Decoder(UploadRequest)

CONTEXT: Final = web.AppKey("bridge.adapter", ApiContext)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(value: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encoder.encode(value), content_type="application/json")


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
        # The route, not the path: a path can hold anything a caller typed.
        route = request.match_info.route.resource
        where = route.canonical if route is not None else "-"
        log.error("unhandled %s in %s %s", type(exc).__name__, request.method, where)
        return problem_response(ApiProblem(500, "internal error", reason="internal"))


def _unavailable(detail: str, exc: TransportError) -> ApiProblem:
    return ApiProblem(503, detail, reason=exc.reason, headers={"Retry-After": _RETRY_AFTER})


def _ctx(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]


def _require_nats(ctx: ApiContext) -> None:
    """Answer 503 at once while NATS is away, rather than after the request timeout: nothing
    can be stored then, and a caller waiting 10 s per try holds its own work up."""
    if not ctx.ready():
        raise ApiProblem(
            503,
            "NATS is unavailable right now; nothing was stored, retry later",
            reason="transport.not_connected",
            headers={"Retry-After": _RETRY_AFTER},
        )


async def _claims(request: web.Request, scope: str | None) -> Claims:
    claims = await _ctx(request).verifier.verify(request.headers.get("Authorization"))
    if scope is not None:
        claims.require(scope)
    return claims


def _message_id(request: web.Request) -> str:
    try:
        return check_message_id(request.match_info["message_id"])
    except ProtocolError as exc:
        raise ApiProblem(404, "no such message", reason=exc.reason) from None


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds `limit` (before parsing)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiProblem(413, f"the body exceeds {limit} bytes", reason="request.too_large")
    data = bytearray()
    while chunk := await request.content.read(_READ_CHUNK):
        data += chunk
        if len(data) > limit:
            raise ApiProblem(413, f"the body exceeds {limit} bytes", reason="request.too_large")
    return bytes(data)


async def _submit(request: web.Request) -> web.StreamResponse:
    claims = await _claims(request, "messages:send")
    ctx = _ctx(request)
    _require_nats(ctx)
    if request.content_type == "multipart/form-data":
        message_id = await _submit_multipart(request, ctx, claims)
    elif request.content_type == "application/json":
        raw = await _read_body(request, ctx.max_body_bytes)
        message_id = await ctx.outbound.submit(
            raw, subject=claims.subject, idempotency_key=request.headers.get("Idempotency-Key")
        )
    else:
        raise ApiProblem(
            415,
            "the body must be application/json, or multipart/form-data with attachments",
            reason="request.media_type",
        )
    response = _json(Accepted(message_id=message_id), status=202)
    response.headers["Location"] = f"/v1/messages/{message_id}"
    return response


async def _submit_multipart(request: web.Request, ctx: ApiContext, claims: Claims) -> str:
    if "Idempotency-Key" in request.headers:
        # A retry would seal under a fresh content key while JetStream's duplicate window keeps
        # the first attempt's chunks: refused rather than sending chunks that do not open.
        raise ApiProblem(
            400,
            "Idempotency-Key is not supported with attachments; retry only after GET shows "
            "the message missing",
            reason="idempotency.not_with_attachments",
        )
    try:
        reader = await request.multipart()
        raw = await read_message_part(reader, ctx.max_body_bytes)
        return await ctx.outbound.submit_with_attachments(raw, reader, subject=claims.subject)
    except (ValueError, RuntimeError, aiohttp.ClientPayloadError, HttpProcessingError) as exc:
        # aiohttp's own multipart errors (a bad boundary, a malformed part header) quote the
        # request; only the fact is reported.
        raise ApiProblem(
            400, "the multipart body is malformed", reason="request.multipart_malformed"
        ) from exc
    except ConnectionError as exc:
        # The caller went away mid-upload: nobody hears this answer; what was stored is gone.
        raise ApiProblem(
            400, "the request ended before its body did", reason="request.incomplete"
        ) from exc


def _spool(request: web.Request) -> Spool:
    spool = _ctx(request).spool
    if spool is None:
        raise ApiProblem(404, "this adapter takes no attachments", reason="attachment.disabled")
    return spool


def _upload_status(spool: Spool, upload_id: str, size: int) -> UploadStatus:
    received = spool.received(upload_id)
    return UploadStatus(id=upload_id, received=received, size=size, complete=received == size)


async def _upload_create(request: web.Request) -> web.StreamResponse:
    claims = await _claims(request, "messages:send")
    spool = _spool(request)
    if request.content_type != "application/json":
        raise ApiProblem(415, "the body must be application/json", reason="request.media_type")
    raw = await _read_body(request, _ctx(request).max_body_bytes)
    declared = decode_request(_upload_decoder, raw, _ctx(request).max_body_bytes)
    try:
        upload_id = spool.create(
            claims.subject,
            name=declared.name,
            media_type=declared.media_type,
            size=declared.size,
            digest=declared.digest,
        )
    except (OSError, ConfigError) as exc:
        log.warning("upload not created: the spool cannot be written [upload.spool_failed]")
        raise ApiProblem(
            503, "the upload cannot be stored right now; retry later", reason="upload.spool_failed"
        ) from exc
    response = _json(_upload_status(spool, upload_id, declared.size), status=201)
    response.headers["Location"] = f"/v1/uploads/{upload_id}"
    return response


async def _upload_get(request: web.Request) -> web.StreamResponse:
    claims = await _claims(request, "messages:send")
    spool = _spool(request)
    upload_id = request.match_info["upload_id"]
    meta = spool.meta(claims.subject, upload_id)
    return _json(_upload_status(spool, upload_id, meta.size))


async def _upload_part(request: web.Request) -> web.StreamResponse:
    """`PUT /v1/uploads/{id}?offset=N`: one part, appended at exactly the bytes received."""
    claims = await _claims(request, "messages:send")
    spool = _spool(request)
    upload_id = request.match_info["upload_id"]
    meta = spool.meta(claims.subject, upload_id)
    raw_offset = request.query.get("offset", "")
    if not raw_offset.isdigit() or len(raw_offset) > 15:
        raise ApiProblem(
            400,
            "offset must be the number of bytes received so far",
            reason="upload.offset_invalid",
            field="offset",
        )
    offset = int(raw_offset)
    length = request.content_length
    if length is not None and offset + length > meta.size:
        raise ApiProblem(
            413, "the part goes beyond the upload's declared size", reason="upload.too_large"
        )

    async def pieces() -> AsyncIterator[bytes]:
        try:
            while piece := await request.content.read(_READ_CHUNK):
                yield piece
        except (aiohttp.ClientPayloadError, HttpProcessingError, ConnectionError):
            # The client went away mid-part: what was written stays, GET tells where to resume.
            log.info("upload part broken off [upload.part_incomplete]")

    try:
        await spool.append(claims.subject, upload_id, offset, pieces())
    except OSError as exc:
        log.warning("upload part not stored: the spool cannot be written [upload.spool_failed]")
        raise ApiProblem(
            503, "the part cannot be stored right now; retry later", reason="upload.spool_failed"
        ) from exc
    return _json(_upload_status(spool, upload_id, meta.size))


async def _message(request: web.Request) -> web.StreamResponse:
    await _claims(request, "messages:read")
    ctx = _ctx(request)
    message_id = _message_id(request)
    try:
        record = await ctx.store.get_message(message_id)
    except TransportError as exc:
        raise _unavailable("records cannot be read right now; retry later", exc) from exc
    if record is None:
        raise ApiProblem(404, "no such message", reason="message.unknown")
    return _json(message_status(record, int(ctx.clock())))


def _inbox(request: web.Request) -> PullInbox:
    inbox = _ctx(request).inbox
    if inbox is None:
        raise ApiProblem(
            404, "this adapter delivers by webhook; there is no inbox", reason="inbox.disabled"
        )
    return inbox


async def _inbox_list(request: web.Request) -> web.StreamResponse:
    await _claims(request, "inbox:read")
    return _json(InboxList(items=_inbox(request).list()))


async def _inbox_item(request: web.Request) -> web.StreamResponse:
    await _claims(request, "inbox:read")
    item = _inbox(request).get(_message_id(request))
    if item is None:
        raise ApiProblem(404, "no such pending message", reason="inbox.unknown")
    return _json(item)


async def _inbox_attachment(request: web.Request) -> web.StreamResponse:
    """One attachment of a held message, streamed chunk by chunk; a single byte range too."""
    await _claims(request, "inbox:read")
    ctx = _ctx(request)
    incoming = _inbox(request).held(_message_id(request))
    raw_index = request.match_info["index"]
    index = int(raw_index) if raw_index.isdigit() and len(raw_index) <= 2 else -1
    if incoming is None or not 0 <= index < len(incoming.attachments):
        raise ApiProblem(404, "no such attachment", reason="attachment.unknown")
    if ctx.chunks is None:
        raise ApiProblem(404, "no such attachment", reason="attachment.unknown")
    _require_nats(ctx)
    attachment = incoming.attachments[index]
    try:
        wanted = byte_range(request.headers.get("Range"), attachment.size)
    except ValueError:
        raise ApiProblem(
            416,
            "the range must be one satisfiable range of bytes",
            reason="attachment.range_invalid",
            headers={"Content-Range": f"bytes */{attachment.size}"},
        ) from None
    start, end = wanted if wanted is not None else (0, attachment.size)
    digest = base64.b64encode(attachment.digest).decode()
    response = web.StreamResponse(status=200 if wanted is None else 206)
    response.content_type = attachment.media_type
    response.content_length = end - start
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Repr-Digest"] = f"sha-256=:{digest}:"
    response.headers["Content-Disposition"] = _disposition(attachment.name)
    if wanted is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{attachment.size}"
    pieces = plaintext(
        ctx.chunks, incoming.item.sender, incoming.message_id, attachment, start, end
    )
    try:
        first = await anext(pieces, b"")
    except (BridgeError, TransportError) as exc:
        log.warning("attachment of %s cannot be read [%s]", incoming.message_id, exc.reason)
        raise ApiProblem(
            503, "the attachment cannot be read right now; retry later", reason=exc.reason
        ) from exc
    await response.prepare(request)
    await response.write(first)
    # Past this point a failure can only cut the response short (the length tells the client).
    async for piece in pieces:
        await response.write(piece)
    await response.write_eof()
    return response


def _disposition(name: str) -> str:
    """`attachment; filename*=UTF-8''...`: the name percent-encoded, never raw in a header."""
    return "attachment; filename*=UTF-8''" + urllib.parse.quote(name, safe="")


async def _inbox_ack(request: web.Request) -> web.StreamResponse:
    await _claims(request, "inbox:ack")
    inbox = _inbox(request)
    message_id = _message_id(request)
    _require_nats(_ctx(request))
    try:
        # Not held, but recorded as delivered: an ack repeated because its 204 was lost.
        found = await inbox.ack(message_id) or await _ctx(request).store.was_delivered(message_id)
    except TransportError as exc:
        raise _unavailable("the acknowledgement cannot be recorded right now; retry", exc) from exc
    if not found:
        raise ApiProblem(404, "no such pending message", reason="inbox.unknown")
    return web.Response(status=204)


async def _consent_create(request: web.Request) -> web.StreamResponse:
    await _claims(request, "consents:write")
    ctx = _ctx(request)
    if request.content_type != "application/json":
        raise ApiProblem(415, "the body must be application/json", reason="request.media_type")
    view = await ctx.consents.register(await _read_body(request, ctx.max_body_bytes))
    response = _json(view, status=201)
    response.headers["Location"] = f"/v1/consents/{view.consent_id}"
    return response


async def _consent_get(request: web.Request) -> web.StreamResponse:
    await _claims(request, "consents:read")
    return _json(await _ctx(request).consents.view(request.match_info["consent_id"]))


async def _consent_list(request: web.Request) -> web.StreamResponse:
    await _claims(request, "consents:read")
    local_ref = request.query.get("local_ref")
    if local_ref is None:
        raise ApiProblem(
            422,
            "give the local reference to search for",
            reason="request.invalid",
            field="local_ref",
        )
    return _json(await _ctx(request).consents.for_local_ref(local_ref))


async def _consent_withdraw(request: web.Request) -> web.StreamResponse:
    await _claims(request, "consents:write")
    return _json(await _ctx(request).consents.withdraw(request.match_info["consent_id"]))


async def _consent_form(request: web.Request) -> web.StreamResponse:
    await _claims(request, "consents:read")
    ctx = _ctx(request)
    lang = request.query.get("lang", "de")
    if lang not in LANGUAGES:
        raise ApiProblem(422, "lang must be de or en", reason="request.invalid", field="lang")
    view_state = await ctx.consents.record(request.match_info["consent_id"])
    page = render_form(view_state, ctx.directory(), lang)  # type: ignore[arg-type]
    return web.Response(text=page, content_type="text/html", charset="utf-8")


async def _disclosures(request: web.Request) -> web.StreamResponse:
    """The client's disclosure report, from the audit trail (`disclosures.py`)."""
    await _claims(request, "consents:read")
    ctx = _ctx(request)
    if ctx.disclosures is None:
        raise ApiProblem(
            503, "disclosure reports are not available", reason="disclosure.unavailable"
        )
    query = request.query
    form = query.get("format", "json")
    lang = query.get("lang", "de")
    if form not in ("json", "html"):
        raise ApiProblem(
            422, "format must be json or html", reason="request.invalid", field="format"
        )
    if lang not in LANGUAGES:
        raise ApiProblem(422, "lang must be de or en", reason="request.invalid", field="lang")
    report = await ctx.disclosures.report(
        local_ref=query.get("local_ref"), consent_id=query.get("consent")
    )
    if form == "html":
        page = render_report(report, ctx.directory(), lang)  # type: ignore[arg-type]
        return web.Response(text=page, content_type="text/html", charset="utf-8")
    return _json(report)


async def _inbox_deleted(request: web.Request) -> web.StreamResponse:
    """The local system deleted what a `consent-revoked` notice named (both delivery modes)."""
    await _claims(request, "inbox:ack")
    ctx = _ctx(request)
    notice_id = _message_id(request)
    try:
        if ctx.inbox is not None and ctx.inbox.get(notice_id) is not None:
            await ctx.inbox.ack(notice_id)  # taken, too: it leaves the pull inbox
        confirmation = await ctx.revocations.confirm(notice_id)
    except TransportError as exc:
        raise _unavailable("the confirmation cannot be sent right now; retry", exc) from exc
    if confirmation is None:
        raise ApiProblem(404, "no such consent-revoked notice", reason="notice.unknown")
    return _json(DeletionConfirmation(message_id=confirmation))


async def _healthz(request: web.Request) -> web.StreamResponse:
    return _json(Health(status="ok"))


async def _readyz(request: web.Request) -> web.StreamResponse:
    ready = _ctx(request).ready()
    return _json(Health(status="ok" if ready else "unavailable"), status=200 if ready else 503)


async def _openapi(request: web.Request) -> web.StreamResponse:
    await _claims(request, None)
    return web.Response(body=_ctx(request).openapi, content_type="application/json")


def build_app(context: ApiContext) -> web.Application:
    # The body limit is enforced by `_read_body`; aiohttp's own is a backstop just above it.
    app = web.Application(
        middlewares=[_problems, guard_middleware], client_max_size=context.max_body_bytes + 1
    )
    app[CONTEXT] = context
    app.router.add_post("/v1/messages", _submit)
    app.router.add_get("/v1/messages/{message_id}", _message)
    app.router.add_post("/v1/uploads", _upload_create)
    app.router.add_get("/v1/uploads/{upload_id}", _upload_get)
    app.router.add_put("/v1/uploads/{upload_id}", _upload_part)
    app.router.add_get("/v1/inbox", _inbox_list)
    app.router.add_get("/v1/inbox/{message_id}", _inbox_item)
    app.router.add_get("/v1/inbox/{message_id}/attachments/{index}", _inbox_attachment)
    app.router.add_post("/v1/inbox/{message_id}/ack", _inbox_ack)
    app.router.add_post("/v1/inbox/{message_id}/deleted", _inbox_deleted)
    app.router.add_post("/v1/consents", _consent_create)
    app.router.add_get("/v1/consents", _consent_list)
    app.router.add_get("/v1/consents/{consent_id}", _consent_get)
    app.router.add_delete("/v1/consents/{consent_id}", _consent_withdraw)
    app.router.add_get("/v1/consents/{consent_id}/form", _consent_form)
    app.router.add_get("/v1/disclosures", _disclosures)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/openapi.json", _openapi)
    if context.metrics is not None:
        registry = context.metrics

        async def metrics(request: web.Request) -> web.StreamResponse:
            return metrics_response(registry)

        app.router.add_get("/metrics", metrics)
    return app
