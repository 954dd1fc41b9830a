"""Serving HTTP without ever quoting a request: aiohttp's error path, replaced.

A request aiohttp cannot parse (a bad request line, a header with a control character, a line
over its limit, the rest of a body longer than its `Content-Length`) never reaches the
application or its middlewares: aiohttp's `RequestHandler.handle_error` answers it with a
text/plain 400 that quotes the offending bytes, and logs them with a traceback. Those bytes are
request content (names, addresses, tokens). `GuardedAppRunner` serves an application through a
handler whose error path logs the fact and a reason code only and answers with a problem+json
that quotes nothing, and `guard_middleware` enforces bridge's own limits on what the parser let
through:

- a path (with query) over `MAX_PATH` bytes: 414 `request.uri_too_long`;
- an `Authorization` header over `MAX_HEADER` bytes: 401 `auth.token_too_large`;
- any other header over `MAX_HEADER` bytes: 431 `request.header_too_large`;
- past the parser's own limits (`_PARSER_LINE`, `_PARSER_FIELD`, both far above ours):
  414 `request.uri_too_long` or 431 `request.header_too_large`, told apart by which limit
  the parser reports;
- an `Idempotency-Key` or `Authorization` header with a character HTTP does not allow (the
  parser refuses those): 400 `idempotency.key_invalid` or 401 `auth.invalid`; any other
  unparseable request: 400 `request.malformed`.

Every response names the server `bridge`, without Python or aiohttp versions.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .problems import ApiProblem, http_exception_problem, problem_response

__all__ = [
    "MAX_HEADER",
    "MAX_PATH",
    "SERVER_HEADER",
    "GuardedAppRunner",
    "guard_middleware",
    "problem_middleware",
]

log = logging.getLogger("bridge.http")

SERVER_HEADER: Final = "bridge"
MAX_PATH: Final = 8192
"""Longest path with query string bridge serves (bytes, as sent)."""
MAX_HEADER: Final = 8190
"""Longest header value bridge accepts (bytes): aiohttp's own default for a whole field."""

# The parser's limits sit well above ours so that what is merely too long for bridge reaches
# `guard_middleware` and gets a precise answer. They differ by one byte so that a `LineTooLong`
# from the parser tells which line was too long (request line or header) without looking at the
# bytes it quotes.
_PARSER_LINE: Final = 32 * 1024
_PARSER_FIELD: Final = 32 * 1024 - 1
# The name of the header an "invalid character" error is about, from the parser's message; only
# compared with names bridge knows, never logged or echoed.
_HEADER_NAME: Final = re.compile(r"^\s*b['\"]([!#$%&'*+.^_`|~0-9A-Za-z-]+):", re.MULTILINE)


def _parse_problem(exc: BaseException | None) -> ApiProblem:
    """The answer to a request the parser refused, from the exception's type and limits."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == _PARSER_LINE:
            return ApiProblem(414, "the request line is too long", reason="request.uri_too_long")
        return ApiProblem(431, "a request header is too large", reason="request.header_too_large")
    if isinstance(exc, BadHttpMethod):
        return ApiProblem(400, "not an HTTP request bridge understands", reason="request.malformed")
    if isinstance(exc, BadHttpMessage):
        found = _HEADER_NAME.search(exc.message or "")
        name = found.group(1).lower() if found else ""
        if name == "idempotency-key":
            return ApiProblem(
                400,
                "Idempotency-Key must be 1 to 200 printable ASCII characters",
                reason="idempotency.key_invalid",
            )
        if name == "authorization":
            return ApiProblem(
                401,
                "the Authorization header holds characters HTTP does not allow",
                reason="auth.invalid",
            )
    return ApiProblem(400, "the request is not well-formed HTTP", reason="request.malformed")


class _GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with an error path that quotes nothing."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 400:
            problem = _parse_problem(exc)
        elif status == 504:
            problem = ApiProblem(504, "the request took too long", reason="request.timeout")
        else:
            problem = ApiProblem(500, "internal error", reason="internal")
        # The exception's type only: its message and traceback quote the request.
        kind = type(exc).__name__ if exc is not None else "none"
        log.warning("refused an HTTP request (%s) [%s]", kind, problem.reason)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already started; closing the connection")
        response = problem_response(problem)
        response.headers["Server"] = SERVER_HEADER
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        kind = type(exc).__name__ if isinstance(exc, BaseException) else "error"
        log.error("HTTP connection error (%s)", kind)

    def log_debug(self, *args: Any, **kw: Any) -> None:
        pass  # aiohttp's debug lines can carry exceptions that quote the request


class _GuardedServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections use the guarded error path and bridge's limits.

    It also sets the `Server` header of every response of `app` (so create it before the
    application starts) and turns aiohttp's access log off (it would log paths).
    """

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("access_log", None)
        app.on_response_prepare.append(_server_header)
        super().__init__(app, max_line_size=_PARSER_LINE, max_field_size=_PARSER_FIELD, **kwargs)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **plain._kwargs,
        )


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


@web.middleware
async def guard_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """bridge's limits on path and header sizes, checked before anything reads them."""
    if len(request.raw_path) > MAX_PATH:
        raise ApiProblem(414, f"the path exceeds {MAX_PATH} bytes", reason="request.uri_too_long")
    for name, value in request.headers.items():
        if len(value) > MAX_HEADER:
            if name.lower() == "authorization":
                raise ApiProblem(
                    401,
                    f"the Authorization header exceeds {MAX_HEADER} bytes",
                    reason="auth.token_too_large",
                )
            raise ApiProblem(
                431,
                f"a request header exceeds {MAX_HEADER} bytes",
                reason="request.header_too_large",
            )
    response: web.StreamResponse = await handler(request)
    return response


@web.middleware
async def problem_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """For a server without an API of its own (a health and metrics port, the demo sink):
    `guard_middleware`'s refusals and aiohttp's own 4xx (no such route, 405 with `Allow`) as
    problems, like the adapter's and ops' answers. Put it before `guard_middleware`."""
    try:
        response: web.StreamResponse = await handler(request)
    except ApiProblem as problem:
        return problem_response(problem)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(http_exception_problem(exc))
    return response
