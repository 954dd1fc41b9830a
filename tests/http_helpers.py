"""Raw HTTP against bridge's servers: what a client aiohttp would refuse to send, sent as bytes.

Every bridge process that serves HTTP (the adapter, ops, each health and metrics port, the demo
sink) must answer a malformed or oversized request with a problem that quotes nothing, and log
nothing of it but the fact (issue 6, findings 3, 4 and 6). `MALFORMED` holds the requests every
one of them gets; `check_malformed` sends them and checks the answers and the captured log.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

# Stands for personal data: whatever a caller sent must appear in no answer and no log line.
SECRET = "Erika-Mustermann-Hauptstr-5-0176-5550123"
SECRET_BYTES = SECRET.encode()

Response = tuple[int, dict[str, str], bytes]


async def raw_http(url: str, request: bytes) -> list[Response]:
    """Send `request` as it is over a socket; every response until the server closes."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(20):
            data = await reader.read()  # the server closes after an error (or Connection: close)
    finally:
        writer.close()
    responses = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", len(rest)))
        responses.append((status, headers, rest[:length]))
        data = rest[length:]
    return responses


def assert_problem(response: Response, status: int, code: str) -> None:
    """A problem+json with this status and code, no `instance`, from a server named `bridge`."""
    got_status, headers, body = response
    assert (got_status, headers.get("content-type")) == (status, "application/problem+json"), (
        response
    )
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (status, code), problem
    assert "instance" not in problem
    assert headers.get("server") == "bridge"


def assert_no_echo(caplog: pytest.LogCaptureFixture, *responses: Response) -> None:
    """`SECRET` in no answer (body or header) and in no log record, tracebacks included."""
    for _, headers, body in responses:
        assert SECRET_BYTES not in body
        assert SECRET not in "".join(headers.values())
    for record in caplog.records:
        text = record.getMessage() + (
            logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        )
        assert SECRET not in text, record.name


# name: (the raw request, the status and code of the last answer; every answer is a problem)
MALFORMED: dict[str, tuple[bytes, tuple[int, str]]] = {
    # The body is longer than Content-Length says: its rest arrives as a "request" of its own.
    "content-length-too-small": (
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 9\r\n\r\n" + b'{"body": {"name": "' + SECRET_BYTES + b'"}}',
        (400, "request.malformed"),
    ),
    "authorization-over-8190-bytes": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET_BYTES * 250
        + b"\r\nConnection: close\r\n\r\n",
        (401, "auth.token_too_large"),
    ),
    "authorization-over-the-parser-limit": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET_BYTES * 1000
        + b"\r\n\r\n",
        (431, "request.header_too_large"),
    ),
    "other-header-over-8190-bytes": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Note: "
        + SECRET_BYTES * 250
        + b"\r\nConnection: close\r\n\r\n",
        (431, "request.header_too_large"),
    ),
    "path-over-8-KiB": (
        b"GET /healthz/"
        + SECRET_BYTES * 250
        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        (414, "request.uri_too_long"),
    ),
    "path-over-the-parser-limit": (
        b"GET /healthz/" + SECRET_BYTES * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        (414, "request.uri_too_long"),
    ),
    "not-a-request-line": (
        SECRET_BYTES + b" / HTTP/1.1\r\nHost: x\r\n\r\n",
        (400, "request.malformed"),
    ),
    "control-character-in-a-header": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Note: " + SECRET_BYTES + b"\x01\r\n\r\n",
        (400, "request.malformed"),
    ),
    "idempotency-key-with-del": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nIdempotency-Key: " + SECRET_BYTES + b"\x7f\r\n\r\n",
        (400, "idempotency.key_invalid"),
    ),
    "authorization-with-a-control-character": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + SECRET_BYTES
        + b"\x7f\r\n\r\n",
        (401, "auth.invalid"),
    ),
    "unknown-path": (
        b"GET /" + SECRET_BYTES + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        (404, "http.not_found"),
    ),
    "trace": (
        b"TRACE /healthz HTTP/1.1\r\nHost: x\r\nX-Note: "
        + SECRET_BYTES
        + b"\r\nConnection: close\r\n\r\n",
        (405, "http.method_not_allowed"),
    ),
}


async def check_malformed(
    url: str,
    caplog: pytest.LogCaptureFixture,
    requests: dict[str, tuple[bytes, tuple[int, str]]] | None = None,
) -> None:
    """Send every request raw to the server at `url`: each answer a problem quoting nothing,
    a 405 with `Allow`, the fact logged and nothing of the request. Set caplog's level first."""
    for name, (request, expected) in (requests or MALFORMED).items():
        responses = await raw_http(url, request)
        assert responses, name
        for status, headers, _ in responses:
            assert 400 <= status < 500, name
            assert headers["content-type"] == "application/problem+json", name
        assert_problem(responses[-1], *expected)
        assert_no_echo(caplog, *responses)
        if expected[0] == 405:
            assert responses[-1][1]["allow"], name
    assert "refused an HTTP request" in caplog.text  # the fact is logged, nothing more
