"""The demo's stand-in for a counselling service's local system: a webhook receiver.

It checks each webhook call's HMAC signature with the agency's webhook secret (a call that does
not verify gets 401 and is not kept), keeps what it received in memory (bounded, oldest dropped)
and shows it at `GET /deliveries` to whoever presents the sink's access token: the deliveries
hold decrypted content, fictional in the demo but personal data in shape.

Every call is kept, duplicates included, so a test can tell "delivered once" from "delivered
twice"; a real local system would deduplicate on `message_id`. A message with attachments comes
as multipart: the sink checks the signed message part, then each file against the digest and
size it names (401 or 400 otherwise), and keeps only the message, not the files.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import BodyPartReader, ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import ConfigError
from ..http.guard import GuardedAppRunner, guard_middleware, problem_middleware

__all__ = ["MAX_KEPT", "Delivery", "DemoSink", "verify_webhook_signature"]

MAX_KEPT: Final = 1000
_MAX_BODY: Final = 2 * 1024 * 1024
_READ: Final = 256 * 1024
SIGNATURE_HEADER: Final = "Bridge-Signature"
_MAX_SKEW: Final = 300


@dataclass(frozen=True, slots=True)
class Delivery:
    """One webhook call the sink accepted."""

    agency: str
    received_at: str
    payload: Mapping[str, Any]

    @property
    def message_id(self) -> str | None:
        value = self.payload.get("message_id")
        return value if isinstance(value, str) else None

    def as_json(self) -> dict[str, Any]:
        return {"agency": self.agency, "received_at": self.received_at, "delivery": self.payload}


def verify_webhook_signature(
    secret: bytes, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> bool:
    """Whether `body` carries a fresh, valid `Bridge-Signature` by `secret`.

    The header is `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (docs/adapter.md);
    a timestamp more than five minutes off is refused, so a captured call cannot be replayed
    much later.
    """
    timestamp, given = "", []
    for part in headers.get(SIGNATURE_HEADER, "")[:1024].split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and not timestamp:
            timestamp = value
        elif name == "v1":
            given.append(value)  # one per secret the adapter signs with (rotation)
    if not timestamp.isdigit() or len(timestamp) > 12 or not given:
        return False
    at = time.time() if now is None else now
    if abs(at - int(timestamp)) > _MAX_SKEW:
        return False
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected.encode(), v1.encode()) for v1 in given)


class DemoSink:
    """The sink's web application and what it received; start it with `start(host, port)`."""

    def __init__(
        self, secrets: Mapping[str, bytes], access_token: str, *, max_kept: int = MAX_KEPT
    ) -> None:
        if not access_token:
            raise ConfigError("the sink needs an access token", reason="up.sink")
        self._secrets = dict(secrets)
        self._access_token = access_token
        self._kept: deque[Delivery] = deque(maxlen=max_kept)
        self._refused = 0
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def __repr__(self) -> str:
        return f"DemoSink(url={self.url!r}, kept={len(self._kept)}, refused={self._refused})"

    @property
    def deliveries(self) -> tuple[Delivery, ...]:
        return tuple(self._kept)

    def statistics(self) -> dict[str, int]:
        return {"kept": len(self._kept), "refused": self._refused}

    def app(self) -> web.Application:
        # bridge's size limits, and aiohttp's own 4xx as problems (the sink's answers to
        # webhook calls stay what a local system would answer).
        app = web.Application(
            client_max_size=_MAX_BODY, middlewares=[problem_middleware, guard_middleware]
        )
        app.router.add_post("/webhook/{agency}", self._webhook)
        app.router.add_get("/deliveries", self._list)
        app.router.add_get("/healthz", self._health)
        return app

    async def start(self, host: str, port: int) -> None:
        runner = GuardedAppRunner(self.app())
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"the demo sink cannot listen on {host}:{port}: {exc.strerror}",
                reason="up.port_in_use",
            ) from exc
        self._runner = runner
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _webhook(self, request: web.Request) -> web.Response:
        agency = request.match_info["agency"]
        secret = self._secrets.get(agency)
        if secret is not None and request.content_type == "multipart/form-data":
            return await self._with_files(request, agency, secret)
        body = await request.read()
        if secret is None or not verify_webhook_signature(secret, request.headers, body):
            self._refused += 1
            return web.json_response({"error": "signature does not verify"}, status=401)
        try:
            payload = json.loads(body)
        except ValueError:
            return web.json_response({"error": "not JSON"}, status=400)
        if not isinstance(payload, dict):
            return web.json_response({"error": "not a JSON object"}, status=400)
        return self._keep(agency, payload)

    async def _with_files(self, request: web.Request, agency: str, secret: bytes) -> web.Response:
        """A message with attachments: the signed `message` part, then each file, hashed as it
        streams in and checked against the digest and size the message names. The files
        themselves are not kept, only the message (which lists them)."""
        try:
            reader = await request.multipart()
            part = await reader.next()
            if not isinstance(part, BodyPartReader) or part.name != "message":
                return web.json_response({"error": "the first part is not the message"}, status=400)
            body = bytearray()
            while piece := await part.read_chunk(_READ):
                body += piece
                if len(body) > _MAX_BODY:
                    return web.json_response({"error": "the message is too large"}, status=413)
            if not verify_webhook_signature(secret, request.headers, bytes(body)):
                self._refused += 1
                return web.json_response({"error": "signature does not verify"}, status=401)
            payload = json.loads(body)
            if not isinstance(payload, dict):
                return web.json_response({"error": "not a JSON object"}, status=400)
            for listed in payload.get("attachments", []):
                part = await reader.next()
                if not isinstance(part, BodyPartReader) or not isinstance(listed, dict):
                    return web.json_response({"error": "an attachment is missing"}, status=400)
                digest, size = hashlib.sha256(), 0
                while piece := await part.read_chunk(_READ):
                    digest.update(piece)
                    size += len(piece)
                if digest.hexdigest() != listed.get("sha256") or size != listed.get("size"):
                    return web.json_response(
                        {"error": "an attachment differs from its digest"}, status=400
                    )
            if await reader.next() is not None:
                return web.json_response({"error": "more parts than attachments"}, status=400)
        except (ValueError, RuntimeError, HttpProcessingError, ClientPayloadError):
            return web.json_response({"error": "not a multipart message"}, status=400)
        return self._keep(agency, payload)

    def _keep(self, agency: str, payload: dict[str, Any]) -> web.Response:
        received = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        self._kept.append(Delivery(agency=agency, received_at=received, payload=payload))
        if payload.get("type") == "consent-revoked":
            # The demo's local system holds nothing it would have to delete first, so it says
            # at once that it did: the adapter then sends the deletion confirmation.
            return web.json_response({"received": True, "deleted": True})
        return web.json_response({"received": True})

    async def _list(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {self._access_token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return web.json_response({"error": "a bearer token is required"}, status=401)
        agency = request.query.get("agency")
        kept = [d.as_json() for d in self._kept if agency is None or d.agency == agency]
        return web.json_response({"deliveries": kept})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})
